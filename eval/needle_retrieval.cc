#include "eval/needle_retrieval.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "common/logging.h"
#include "kernels/backend_registry.h"
#include "kvstore/kv_store.h"
#include "worker/attention/hybrid_attention.h"
#include "worker/attention/kv_writer.h"

namespace lserve {
namespace {

// One decode query over the store's single sequence through HybridAttention.
std::vector<float> Attend(KvStore* store, Backend* backend, const SparseAttentionConfig& config,
                          const std::vector<float>& q, int64_t context,
                          std::vector<int32_t>* selection) {
  auto attention = HybridAttention::Create(store, config, 1, backend);
  CHECK(attention.ok()) << attention.status();
  backend->BeginStep();
  AttentionPlan plan;
  const AttentionSequence entry{0, 0, 1, context - 1, true, 0};
  CHECK(plan.Build(*store, {&entry, 1}, config, backend).ok());
  std::vector<float> out(q.size());
  CHECK((*attention)->Run(0, plan, q.data(), out.data()).ok());
  if (selection != nullptr) *selection = (*attention)->selector().Current(0, 0, 0);
  return out;
}

}  // namespace

NeedleTrialResult RunNeedleTrial(const NeedleTrialConfig& config, uint64_t seed, ThreadPool* pool) {
  const int d = config.head_dim;
  const int64_t n = config.context;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> q(d);
  double q_norm = 0.0;
  for (float& x : q) {
    x = normal(rng);
    q_norm += double{x} * x;
  }
  q_norm = std::sqrt(q_norm);
  // Needles sit anywhere but the newest page, which is always selected anyway.
  std::uniform_int_distribution<int64_t> where(0, n - config.page_size - 1);
  std::set<int64_t> needles;
  while (static_cast<int>(needles.size()) < config.num_needles) needles.insert(where(rng));
  // q.(scale * q) / sqrt(d) = needle_logit.
  const float scale = static_cast<float>(config.needle_logit * std::sqrt(static_cast<double>(d)) /
                                         (q_norm * q_norm));

  KvStoreConfig kv;
  kv.num_layers = 1;
  kv.num_kv_heads = 1;
  kv.head_dim = d;
  kv.page_size = config.page_size;
  kv.logical_page_size = config.logical_page_size;
  kv.num_dense_pages = (n + config.page_size - 1) / config.page_size;
  auto store = KvStore::Create(kv, HostMemory());
  CHECK(store.ok()) << store.status();
  BackendOptions options;
  options.num_threads = pool == nullptr ? 1 : pool->num_threads();
  auto backend = CreateBackend("cpu", options);
  CHECK(backend.ok()) << backend.status();
  auto writer = KvWriter::Create(store->get(), backend->get());
  CHECK(writer.ok()) << writer.status();
  const int64_t chunk = 4096;
  std::vector<float> k(chunk * d), v(chunk * d);
  // The prompt, then the newest token as a decode step whose query is q.
  for (int64_t start = 0; start < n;) {
    const int64_t rows = start < n - 1 ? std::min(chunk, n - 1 - start) : 1;
    for (int64_t r = 0; r < rows; ++r) {
      const bool needle = needles.count(start + r) > 0;
      for (int c = 0; c < d; ++c) {
        k[r * d + c] = needle ? scale * q[c] + 0.1f * normal(rng) : normal(rng);
        v[r * d + c] = normal(rng);
      }
    }
    const float* k_ptr = k.data();
    const float* v_ptr = v.data();
    CHECK((*writer)->Append(0, rows, start == n - 1, {&k_ptr, 1}, {&v_ptr, 1}).ok());
    start += rows;
  }

  SparseAttentionConfig sparse = AttentionConfigFor(kv);
  sparse.streaming_heads = false;
  sparse.page_selection = true;
  sparse.token_budget = config.token_budget;
  sparse.reuse_interval = 1;
  SparseAttentionConfig dense = sparse;
  dense.page_selection = false;
  std::vector<int32_t> selected;
  const std::vector<float> sparse_out =
      Attend(store->get(), backend->get(), sparse, q, n, &selected);
  const std::vector<float> dense_out = Attend(store->get(), backend->get(), dense, q, n, nullptr);

  NeedleTrialResult result;
  result.num_needles = config.num_needles;
  result.pages_selected = static_cast<int64_t>(selected.size());
  result.pages_total = (n + config.page_size - 1) / config.page_size;
  for (int64_t pos : needles) {
    result.needles_kept +=
        std::binary_search(selected.begin(), selected.end(), pos / config.page_size);
  }
  double diff = 0.0, ref = 0.0;
  for (int c = 0; c < d; ++c) {
    diff += std::pow(double{sparse_out[c]} - dense_out[c], 2);
    ref += std::pow(double{dense_out[c]}, 2);
  }
  result.output_relative_error = std::sqrt(diff / std::max(ref, 1e-30));
  return result;
}

}  // namespace lserve
