// Attention over the exported CSR page tables is bitwise what the span kernel gives on
// spans built directly from each sequence's page lists and ring (the engine's attention
// before the page tables existed): same spans, same order, same arithmetic.
#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "tests/worker/attention/attention_test_util.h"

namespace lserve {
namespace {

constexpr int kHeads = 6, kKvHeads = 3, kDim = 16, kPage = 16;

KvStoreConfig Config() {
  KvStoreConfig config;
  config.num_layers = 2;
  config.num_kv_heads = kKvHeads;
  config.head_dim = kDim;
  config.page_size = kPage;
  config.logical_page_size = 8;
  config.num_dense_pages = 400;
  config.num_streaming_pages = 200;
  config.layout = HeadLayout::FromStreamingMask({{false, true, false}, {true, false, true}});
  config.sink = 20;
  config.prefill_local = 70;
  config.decode_local = 30;
  config.max_chunk_tokens = 64;
  return config;
}

// The spans of one head, built from the sequence's own page list and ring.
std::vector<cpu::KvSpan> DirectSpans(const KvStore& store, SeqId seq, bool streaming,
                                     int64_t kv_len, int64_t first_query, int64_t local,
                                     const std::vector<int32_t>* selection) {
  std::vector<cpu::KvSpan> spans;
  auto add = [&](PageId page, int64_t first) {
    spans.push_back(
        {page, 0, static_cast<int32_t>(std::min<int64_t>(kPage, kv_len - first)), first});
  };
  if (!streaming) {
    const auto& pages = store.tables().DensePages(seq);
    if (selection == nullptr) {
      for (int64_t i = 0; i * kPage < kv_len; ++i) add(pages[i], i * kPage);
    } else {
      for (int32_t i : *selection) add(pages[i], int64_t{i} * kPage);
    }
    return spans;
  }
  const StreamingRing& ring = store.tables().Ring(seq);
  for (size_t i = 0; i < ring.sink_pages().size() && int64_t(i) * kPage < kv_len; ++i) {
    add(ring.sink_pages()[i], i * kPage);
  }
  const int64_t ring_start = store.tables().ring_geometry().ring_start();
  const int64_t window = std::max(ring_start, first_query - local + 1);
  for (int64_t first = ring_start + (window - ring_start) / kPage * kPage; first < kv_len;
       first += kPage) {
    add(ring.Location(first).first, first);
  }
  return spans;
}

TEST(PageTableAttentionTest, EqualsTheSpanKernelOnDirectlyBuiltSpansBitwise) {
  testing::KvDriver driver(Config(), 41);
  SparseAttentionConfig config = AttentionConfigFor(driver.store().config());
  config.token_budget = 48;
  config.reuse_interval = 1;
  auto attention = testing::MakeAttention(driver, config, kHeads);
  const std::vector<int64_t> lengths = {5, 33, 64, 100, 241};
  for (size_t s = 0; s < lengths.size(); ++s) driver.Prefill(s, lengths[s], 64);
  std::normal_distribution<float> normal(0.0f, 1.5f);
  for (int step = 0; step < 3; ++step) {
    // Even sequences decode (selecting past the budget), odd ones prefill a chunk.
    std::vector<AttentionSequence> batch;
    int64_t rows = 0;
    for (size_t s = 0; s < lengths.size(); ++s) {
      const bool decode = s % 2 == 0;
      const int64_t n = decode ? 1 : 7 + step;
      const int64_t start = *driver.tables().Length(s);
      // A prefill chunk may not follow decoding, so odd sequences keep prefilling.
      driver.Append(s, n, decode);
      batch.push_back({static_cast<SeqId>(s), rows, n, start, decode, step});
      rows += n;
    }
    std::vector<float> q(rows * kHeads * kDim), out(q.size(), NAN), direct(q.size(), NAN);
    for (float& x : q) x = normal(driver.rng());
    for (int layer = 0; layer < 2; ++layer) {
      testing::RunLayer(driver, *attention, batch, q.data(), out.data(), layer);
      const LayerHeadLayout& heads = driver.store().layout().layers[layer];
      std::vector<std::vector<cpu::KvSpan>> lists;
      std::vector<cpu::AttentionTask> tasks;
      for (const AttentionSequence& a : batch) {
        const int64_t kv_len = a.start_pos + a.num_queries;
        for (int h = 0; h < kHeads; ++h) {
          const int kv_head = h / 2;
          const bool streaming = heads.streaming[kv_head];
          const KvPool& pool =
              streaming ? driver.store().streaming_pool() : driver.store().dense_pool();
          const bool selects = !streaming && config.SelectsPages(kv_len, a.decode);
          const std::vector<int32_t> selection =
              selects ? attention->selector().Current(a.seq, layer, h) : std::vector<int32_t>{};
          lists.push_back(DirectSpans(driver.store(), a.seq, streaming, kv_len, a.start_pos,
                                      a.decode ? config.decode_local : config.prefill_local,
                                      selects ? &selection : nullptr));
          cpu::AttentionTask task;
          task.q = q.data() + (a.q_row * kHeads + h) * kDim;
          task.out = direct.data() + (a.q_row * kHeads + h) * kDim;
          task.q_stride = task.out_stride = kHeads * kDim;
          task.num_queries = static_cast<int32_t>(a.num_queries);
          task.first_query_pos = a.start_pos;
          const float* base = static_cast<const float*>(pool.LayerBase(layer));
          task.k_base = base + pool.KeyOffset(heads.slot[kv_head]);
          task.v_base = base + pool.ValueOffset(layer, heads.slot[kv_head]);
          task.page_stride = pool.PageStride(layer);
          task.window = {streaming, config.sink,
                         a.decode ? config.decode_local : config.prefill_local};
          tasks.push_back(task);
        }
      }
      for (size_t t = 0; t < tasks.size(); ++t) {
        tasks[t].spans = lists[t].data();
        tasks[t].num_spans = static_cast<int32_t>(lists[t].size());
      }
      cpu::PagedAttention({kDim, 1.0f / std::sqrt(float{kDim}), tasks}, nullptr);
      ASSERT_EQ(out, direct) << "step " << step << " layer " << layer;
    }
  }
}

}  // namespace
}  // namespace lserve
