// Drives a KvStore like the engine does (chunked prefill, then decode appends, through
// the CPU backend's append kernel) with random keys and values, keeping a contiguous copy
// of everything written so tests can check the store against an independent picture of
// each sequence.
#ifndef LSERVE_TESTS_KVSTORE_KV_TEST_UTIL_H_
#define LSERVE_TESTS_KVSTORE_KV_TEST_UTIL_H_

#include <map>
#include <memory>
#include <random>
#include <span>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend_registry.h"
#include "kernels/cpu/attention.h"
#include "kvstore/kv_store.h"
#include "worker/attention/kv_writer.h"

namespace lserve::testing {

// Host views of one layer of a float32 host store, as kernels take them.
struct HostLayerView {
  std::vector<int32_t> slots;
  std::vector<uint8_t> streaming;
  PagedKvLayer view;

  HostLayerView(const KvStore& store, int layer) {
    const KvStoreConfig& c = store.config();
    const LayerHeadLayout& heads = c.layout.layers[layer];
    slots.assign(heads.slot.begin(), heads.slot.end());
    for (bool s : heads.streaming) streaming.push_back(s ? 1 : 0);
    view.dtype = c.dtype;
    view.page_size = c.page_size;
    view.logical_page_size = c.logical_page_size;
    view.head_dim = c.head_dim;
    view.num_kv_heads = c.num_kv_heads;
    view.kv_head_slot = slots.data();
    view.kv_head_streaming = streaming.data();
    view.dense = {store.dense_pool().LayerBase(layer), store.dense_pool().PageStride(layer),
                  heads.num_dense};
    view.streaming = {store.streaming_pool().LayerBase(layer),
                      store.streaming_pool().PageStride(layer), heads.num_streaming};
  }
};

// A batch's page tables exported at the sequences' committed lengths, with host views.
struct HostTables {
  PageTableArrays arrays;
  PageTableView view;

  HostTables(const KvStore& store, const std::vector<SeqId>& seqs) {
    std::vector<BatchSequence> batch;
    for (SeqId seq : seqs) batch.push_back({seq, *store.tables().Length(seq)});
    arrays.Clear();
    store.tables().ExportBatch(batch, &arrays);
    view.num_seqs = arrays.num_seqs();
    view.ring_start = arrays.ring_start;
    view.kv_len = arrays.kv_len.data();
    view.dense_indptr = arrays.dense_indptr.data();
    view.dense_indices = arrays.dense_indices.data();
    view.stream_indptr = arrays.stream_indptr.data();
    view.stream_indices = arrays.stream_indices.data();
    view.stream_sink_pages = arrays.stream_sink_pages.data();
  }
};

class KvDriver {
 public:
  explicit KvDriver(KvStoreConfig config, uint32_t seed = 1, bool prefix_caching = false)
      : rng_(seed) {
    auto store = KvStore::Create(std::move(config), HostMemory(), prefix_caching);
    EXPECT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    auto backend = CreateBackend("cpu", {2, 0});
    EXPECT_TRUE(backend.ok()) << backend.status();
    backend_ = *std::move(backend);
    auto writer = KvWriter::Create(store_.get(), backend_.get());
    EXPECT_TRUE(writer.ok()) << writer.status();
    writer_ = *std::move(writer);
  }

  KvStore& store() { return *store_; }
  KvPageTables& tables() { return store_->tables(); }
  Backend& backend() { return *backend_; }
  int width() const { return store_->config().num_kv_heads * store_->config().head_dim; }

  // Appends n tokens to seq in every layer (a prefill chunk, or one decode token).
  void Append(SeqId seq, int64_t n, bool decode) {
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const int layers = store_->config().num_layers;
    std::vector<std::vector<float>> k(layers), v(layers);
    std::vector<const float*> k_ptrs, v_ptrs;
    for (int layer = 0; layer < layers; ++layer) {
      k[layer].resize(n * width());
      v[layer].resize(n * width());
      for (float& x : k[layer]) x = normal(rng_);
      for (float& x : v[layer]) x = normal(rng_);
      k_ptrs.push_back(k[layer].data());
      v_ptrs.push_back(v[layer].data());
    }
    const absl::Status status = writer_->Append(seq, n, decode, k_ptrs, v_ptrs);
    ASSERT_TRUE(status.ok()) << "seq " << seq << " +" << n << ": " << status;
    for (int layer = 0; layer < layers; ++layer) {
      auto& keys = keys_[{seq, layer}];
      auto& values = values_[{seq, layer}];
      keys.insert(keys.end(), k[layer].begin(), k[layer].end());
      values.insert(values.end(), v[layer].begin(), v[layer].end());
    }
  }

  // Prefills `length` tokens in random chunks of at most max_chunk.
  void Prefill(SeqId seq, int64_t length, int64_t max_chunk) {
    std::uniform_int_distribution<int64_t> chunk(1, max_chunk);
    for (int64_t done = 0; done < length;) {
      const int64_t n = std::min(length - done, chunk(rng_));
      Append(seq, n, false);
      done += n;
    }
  }

  // The key written for (seq, layer, pos, kv_head): head_dim floats.
  const float* Key(SeqId seq, int layer, int64_t pos, int kv_head) const {
    return keys_.at({seq, layer}).data() + pos * width() +
           int64_t{kv_head} * store_->config().head_dim;
  }
  const float* Value(SeqId seq, int layer, int64_t pos, int kv_head) const {
    return values_.at({seq, layer}).data() + pos * width() +
           int64_t{kv_head} * store_->config().head_dim;
  }

  // Physical page scores of a dense head over the sequence's committed tokens, the max
  // over `queries` (the backend's page scoring kernel).
  std::vector<float> ScorePages(int layer, SeqId seq, int kv_head,
                                std::span<const float* const> queries) {
    const int d = store_->config().head_dim;
    std::vector<float> q;
    for (const float* query : queries) q.insert(q.end(), query, query + d);
    HostLayerView layer_view(*store_, layer);
    HostTables tables(*store_, {seq});
    const int64_t len = tables.arrays.kv_len[0];
    std::vector<float> scores((len + store_->config().page_size - 1) / store_->config().page_size);
    const PageScoreJob job{0, kv_head, 0, static_cast<int32_t>(queries.size()), 0, 0};
    ScorePagesParams params;
    params.kv = layer_view.view;
    params.tables = tables.view;
    params.q = q.data();
    params.q_row_stride = static_cast<int64_t>(q.size());
    params.jobs = &job;
    params.num_jobs = 1;
    params.scores = scores.data();
    EXPECT_TRUE(backend_->ScorePages(params).ok());
    return scores;
  }

  // Stored kmax / kmin of (layer, dense page, slot, logical page): head_dim floats.
  const float* KeyMax(int layer, PageId page, int slot, int64_t logical) const {
    const KvPool& pool = store_->dense_pool();
    return static_cast<const float*>(pool.LayerBase(layer)) + page * pool.PageStride(layer) +
           pool.KeyMaxOffset(layer, slot) + logical * store_->config().head_dim;
  }
  const float* KeyMin(int layer, PageId page, int slot, int64_t logical) const {
    const KvPool& pool = store_->dense_pool();
    return static_cast<const float*>(pool.LayerBase(layer)) + page * pool.PageStride(layer) +
           pool.KeyMinOffset(layer, slot) + logical * store_->config().head_dim;
  }
  // Stored V row of a streaming head's page.
  const float* StreamingValueRow(int layer, PageId page, int slot, int64_t row) const {
    const KvPool& pool = store_->streaming_pool();
    return static_cast<const float*>(pool.LayerBase(layer)) + page * pool.PageStride(layer) +
           pool.ValueOffset(layer, slot) + row * store_->config().head_dim;
  }

  std::mt19937& rng() { return rng_; }

 private:
  std::mt19937 rng_;
  std::unique_ptr<KvStore> store_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<KvWriter> writer_;
  std::map<std::pair<SeqId, int>, std::vector<float>> keys_, values_;
};

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_KVSTORE_KV_TEST_UTIL_H_
