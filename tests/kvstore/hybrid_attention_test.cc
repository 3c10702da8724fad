// The whole sparse read path — ring storage, page statistics, scoring, selection, spans
// and the attention kernel — against an independent naive implementation working on the
// contiguous keys of each sequence of a mixed-length batch (invariant 7 of DESIGN.md §3).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "kvstore/page_selector.h"
#include "tests/kvstore/kv_test_util.h"

namespace lserve {
namespace {

constexpr int kDim = 16;
constexpr int kPage = 16;
constexpr int kLogical = 8;
constexpr int64_t kSink = 10, kPrefillLocal = 100, kDecodeLocal = 40, kBudgetPages = 4;

KvCacheConfig HybridConfig() {
  KvCacheConfig config;
  config.num_layers = 1;
  config.num_kv_heads = 2;  // head 0 dense, head 1 streaming
  config.head_dim = kDim;
  config.page_size = kPage;
  config.logical_page_size = kLogical;
  config.num_dense_pages = 600;
  config.num_streaming_pages = 200;
  config.layout = HeadLayout::FromStreamingMask({{false, true}});
  config.sink = kSink;
  config.prefill_local = kPrefillLocal;
  config.decode_local = kDecodeLocal;
  config.max_chunk_tokens = 64;
  return config;
}

// Softmax attention of q over the listed positions of (seq, head), in double.
std::vector<float> NaiveAttention(const testing::KvDriver& driver, SeqId seq, int head,
                                  const float* q, const std::vector<int64_t>& positions) {
  std::vector<double> scores;
  double max_score = -INFINITY;
  for (int64_t pos : positions) {
    const float* k = driver.Key(seq, 0, pos, head);
    double dot = 0.0;
    for (int c = 0; c < kDim; ++c) dot += double{q[c]} * k[c];
    scores.push_back(dot / std::sqrt(double{kDim}));
    max_score = std::max(max_score, scores.back());
  }
  std::vector<double> out(kDim, 0.0);
  double sum = 0.0;
  for (size_t i = 0; i < positions.size(); ++i) {
    const double w = std::exp(scores[i] - max_score);
    sum += w;
    const float* v = driver.Value(seq, 0, positions[i], head);
    for (int c = 0; c < kDim; ++c) out[c] += w * v[c];
  }
  std::vector<float> result(kDim);
  for (int c = 0; c < kDim; ++c) result[c] = static_cast<float>(out[c] / sum);
  return result;
}

// Selection recomputed from raw keys: logical-page min/max, page score = max of its
// logical pages, newest page plus the best others, lower index first on ties.
std::vector<int64_t> NaiveSelectedPositions(const testing::KvDriver& driver, SeqId seq,
                                            const float* q, int64_t len) {
  const int64_t pages = (len + kPage - 1) / kPage;
  std::vector<double> page_score(pages, -INFINITY);
  for (int64_t first = 0; first < len; first += kLogical) {
    double score = 0.0;
    for (int c = 0; c < kDim; ++c) {
      float lo = INFINITY, hi = -INFINITY;
      for (int64_t pos = first; pos < std::min(len, first + kLogical); ++pos) {
        lo = std::min(lo, driver.Key(seq, 0, pos, 0)[c]);
        hi = std::max(hi, driver.Key(seq, 0, pos, 0)[c]);
      }
      score += std::max(q[c] * hi, q[c] * lo);
    }
    page_score[first / kPage] = std::max(page_score[first / kPage], score);
  }
  std::vector<int64_t> order(pages - 1);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return page_score[a] > page_score[b]; });
  std::vector<int64_t> chosen = {pages - 1};
  for (int64_t i = 0; i < std::min<int64_t>(kBudgetPages - 1, pages - 1); ++i) {
    chosen.push_back(order[i]);
  }
  std::vector<int64_t> positions;
  for (int64_t page : chosen) {
    for (int64_t pos = page * kPage; pos < std::min(len, (page + 1) * kPage); ++pos) {
      positions.push_back(pos);
    }
  }
  return positions;
}

std::vector<float> KernelAttention(const PagedKvCache& cache, bool streaming, const float* q,
                                   int64_t query_pos, const std::vector<cpu::KvSpan>& spans,
                                   int64_t local) {
  std::vector<float> out(kDim);
  cpu::AttentionTask task;
  task.q = q;
  task.out = out.data();
  task.q_stride = task.out_stride = kDim;
  task.num_queries = 1;
  task.first_query_pos = query_pos;
  task.spans = spans.data();
  task.num_spans = static_cast<int32_t>(spans.size());
  task.k_base = streaming ? cache.StreamingK(0) : cache.DenseK(0);
  task.v_base = streaming ? cache.StreamingV(0) : cache.DenseV(0);
  task.page_stride = streaming ? cache.StreamingPageStride(0) : cache.DensePageStride(0);
  task.window = {streaming, kSink, local};
  cpu::PagedAttention({kDim, 1.0f / std::sqrt(float{kDim}), {&task, 1}}, nullptr);
  return out;
}

TEST(HybridAttentionTest, MixedLengthBatchMatchesNaiveHybridAttention) {
  const std::vector<int64_t> lengths = {1, 63, 64, 65, 300, 777};
  testing::KvDriver driver(HybridConfig(), 11);
  for (size_t s = 0; s < lengths.size(); ++s) driver.Prefill(s, lengths[s], 64);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  int checked = 0;
  for (int step = 0; step < 25; ++step) {
    for (size_t s = 0; s < lengths.size(); ++s) {
      driver.Append(s, 1, true);
      const int64_t len = *driver.cache().Length(s);
      std::vector<float> q(kDim);
      for (float& x : q) x = 2.0f * normal(driver.rng());
      // Dense head: selected pages.
      std::vector<float> scores;
      const float* query = q.data();
      ScorePhysicalPages(driver.cache(), 0, s, 0, len, {&query, 1}, &scores);
      std::vector<cpu::KvSpan> spans;
      driver.cache().SelectedDenseSpans(s, len, SelectTopPages(scores, kBudgetPages), &spans);
      const auto dense = KernelAttention(driver.cache(), false, q.data(), len - 1, spans, 0);
      const auto dense_ref =
          NaiveAttention(driver, s, 0, q.data(), NaiveSelectedPositions(driver, s, q.data(), len));
      // Streaming head: sink + decode window.
      spans.clear();
      driver.cache().StreamingSpans(s, len, len - 1, kDecodeLocal, &spans);
      const auto streaming =
          KernelAttention(driver.cache(), true, q.data(), len - 1, spans, kDecodeLocal);
      std::vector<int64_t> window;
      for (int64_t j = 0; j < len; ++j) {
        if (j < kSink || len - 1 - j < kDecodeLocal) window.push_back(j);
      }
      const auto streaming_ref = NaiveAttention(driver, s, 1, q.data(), window);
      for (int c = 0; c < kDim; ++c) {
        ASSERT_NEAR(dense[c], dense_ref[c], 1e-5) << "seq " << s << " len " << len;
        ASSERT_NEAR(streaming[c], streaming_ref[c], 1e-5) << "seq " << s << " len " << len;
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 150);
}

}  // namespace
}  // namespace lserve
