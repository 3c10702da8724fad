#include "eval/needle_retrieval.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "common/logging.h"
#include "kernels/cpu/attention.h"
#include "kvstore/paged_kv_cache.h"
#include "worker/attention/page_selector.h"

namespace lserve {

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

  KvCacheConfig kv;
  kv.num_layers = 1;
  kv.num_kv_heads = 1;
  kv.head_dim = d;
  kv.page_size = config.page_size;
  kv.logical_page_size = config.logical_page_size;
  kv.num_dense_pages = (n + config.page_size - 1) / config.page_size;
  auto cache = PagedKvCache::Create(kv);
  CHECK(cache.ok()) << cache.status();
  CHECK((*cache)->AddSequence(0).ok());
  const int64_t chunk = 4096;
  std::vector<float> k(chunk * d), v(chunk * d);
  for (int64_t start = 0; start < n; start += chunk) {
    const int64_t rows = std::min(chunk, n - start);
    for (int64_t r = 0; r < rows; ++r) {
      const bool needle = needles.count(start + r) > 0;
      for (int c = 0; c < d; ++c) {
        k[r * d + c] = needle ? scale * q[c] + 0.1f * normal(rng) : normal(rng);
        v[r * d + c] = normal(rng);
      }
    }
    CHECK((*cache)->Extend(0, rows, false).ok());
    (*cache)->Write(0, 0, start, rows, k.data(), v.data(), d);
    CHECK((*cache)->Commit(0, rows).ok());
  }

  std::vector<float> scores;
  const float* query = q.data();
  ScorePhysicalPages(**cache, 0, 0, 0, n, {&query, 1}, &scores);
  const std::vector<int32_t> selected =
      SelectTopPages(scores, config.token_budget / config.page_size);
  NeedleTrialResult result;
  result.num_needles = config.num_needles;
  result.pages_selected = static_cast<int64_t>(selected.size());
  result.pages_total = static_cast<int64_t>(scores.size());
  for (int64_t pos : needles) {
    result.needles_kept +=
        std::binary_search(selected.begin(), selected.end(), pos / config.page_size);
  }

  std::vector<cpu::KvSpan> dense_spans, sparse_spans;
  (*cache)->DenseSpans(0, n, &dense_spans);
  (*cache)->SelectedDenseSpans(0, n, selected, &sparse_spans);
  std::vector<float> dense_out(d), sparse_out(d);
  auto attend = [&](const std::vector<cpu::KvSpan>& spans, float* out) {
    cpu::AttentionTask task;
    task.q = q.data();
    task.out = out;
    task.q_stride = task.out_stride = d;
    task.num_queries = 1;
    task.first_query_pos = n - 1;
    task.spans = spans.data();
    task.num_spans = static_cast<int32_t>(spans.size());
    task.k_base = (*cache)->DenseK(0);
    task.v_base = (*cache)->DenseV(0);
    task.page_stride = (*cache)->DensePageStride(0);
    cpu::PagedAttention({d, 1.0f / std::sqrt(float(d)), {&task, 1}}, pool);
  };
  attend(dense_spans, dense_out.data());
  attend(sparse_spans, sparse_out.data());
  double diff = 0.0, ref = 0.0;
  for (int c = 0; c < d; ++c) {
    diff += std::pow(double{sparse_out[c]} - dense_out[c], 2);
    ref += std::pow(double{dense_out[c]}, 2);
  }
  result.output_relative_error = std::sqrt(diff / std::max(ref, 1e-30));
  return result;
}

}  // namespace lserve
