// The whole sparse read path — ring storage, page statistics, scoring, selection, spans
// and the attention kernel — against an independent naive implementation working on the
// contiguous keys of each sequence of a mixed-length batch (invariant 7 of DESIGN.md §3).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kvstore/naive_hybrid.h"
#include "worker/attention/page_selector.h"

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
      const auto dense_ref = testing::NaiveAttention(
          driver, s, 0, 0, q.data(),
          testing::NaiveSelectedPositions(driver, s, 0, 0, {q.data()}, len, kPage, kLogical,
                                          kBudgetPages, kDim),
          kDim);
      // Streaming head: sink + decode window.
      spans.clear();
      driver.cache().StreamingSpans(s, len, len - 1, kDecodeLocal, &spans);
      const auto streaming =
          KernelAttention(driver.cache(), true, q.data(), len - 1, spans, kDecodeLocal);
      const auto streaming_ref = testing::NaiveAttention(
          driver, s, 0, 1, q.data(), testing::StreamingWindow(kSink, kDecodeLocal, len - 1), kDim);
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
