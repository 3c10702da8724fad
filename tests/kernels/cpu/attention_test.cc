// PagedAttention against its double-precision reference over odd shapes, permuted pages,
// streaming windows and GQA.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace lserve::cpu {
namespace {

struct Case {
  int64_t kv_len;
  int32_t num_queries;
  int page_size;
  int head_dim;
  HeadWindow window;
};

// Builds a random paged cache for one head and checks fast vs reference.
void CheckCase(const Case& c, uint32_t seed, ThreadPool* pool) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t num_pages = (c.kv_len + c.page_size - 1) / c.page_size;
  std::vector<int32_t> page_of(num_pages);
  std::iota(page_of.begin(), page_of.end(), 0);
  std::shuffle(page_of.begin(), page_of.end(), rng);
  const int64_t page_stride = int64_t{c.page_size} * c.head_dim;
  // Pool slots past kv_len hold NaN: a kernel that reads them poisons the output.
  std::vector<float> k(num_pages * page_stride, NAN), v(num_pages * page_stride, NAN);
  for (int64_t t = 0; t < c.kv_len; ++t) {
    const int64_t base = page_of[t / c.page_size] * page_stride + (t % c.page_size) * c.head_dim;
    for (int d = 0; d < c.head_dim; ++d) {
      k[base + d] = normal(rng);
      v[base + d] = normal(rng);
    }
  }
  std::vector<KvSpan> spans;
  for (int64_t p = 0; p < num_pages; ++p) {
    spans.push_back(
        {page_of[p], 0,
         static_cast<int32_t>(std::min<int64_t>(c.page_size, c.kv_len - p * c.page_size)),
         p * c.page_size});
  }
  std::vector<float> q(int64_t{c.num_queries} * c.head_dim);
  for (float& x : q) x = 2.0f * normal(rng);
  std::vector<float> fast(q.size(), NAN), ref(q.size(), NAN);
  AttentionTask task;
  task.q = q.data();
  task.q_stride = c.head_dim;
  task.out_stride = c.head_dim;
  task.num_queries = c.num_queries;
  task.first_query_pos = c.kv_len - c.num_queries;
  task.spans = spans.data();
  task.num_spans = static_cast<int32_t>(spans.size());
  task.k_base = k.data();
  task.v_base = v.data();
  task.page_stride = page_stride;
  task.window = c.window;
  AttentionTask ref_task = task;
  task.out = fast.data();
  ref_task.out = ref.data();
  AttentionParams params{c.head_dim, 1.0f / std::sqrt(float(c.head_dim)), {&task, 1}};
  PagedAttention(params, pool);
  PagedAttentionReference({c.head_dim, params.scale, {&ref_task, 1}});
  for (size_t i = 0; i < fast.size(); ++i) {
    ASSERT_FALSE(std::isnan(fast[i])) << i;
    ASSERT_NEAR(fast[i], ref[i], 2e-5f) << "kv_len " << c.kv_len << " element " << i;
  }
}

TEST(PagedAttentionTest, DenseCausalMatchesReferenceOverOddShapes) {
  ThreadPool pool(2);
  uint32_t seed = 0;
  for (int page : {16, 32, 64, 128}) {
    for (int64_t kv_len : {1, 15, 63, 64, 65, 200}) {
      for (int32_t nq : {1, 7, 33}) {
        if (nq > kv_len) continue;
        CheckCase({kv_len, nq, page, 64, {}}, ++seed, &pool);
      }
    }
  }
}

TEST(PagedAttentionTest, StreamingWindowsMatchReference) {
  ThreadPool pool(2);
  uint32_t seed = 100;
  // Unaligned sinks and windows, sink + local longer than the sequence, chunks longer
  // than the window.
  for (HeadWindow window : {HeadWindow{true, 5, 17}, HeadWindow{true, 0, 1},
                            HeadWindow{true, 16, 64}, HeadWindow{true, 300, 300}}) {
    for (int64_t kv_len : {1, 40, 129, 257}) {
      for (int32_t nq : {1, 40}) {
        if (nq > kv_len) continue;
        CheckCase({kv_len, nq, 16, 32, window}, ++seed, &pool);
      }
    }
  }
}

TEST(PagedAttentionTest, RowsThatSeeNoKeyAreZero) {
  const int d = 8;
  std::vector<float> k(16 * d, 1.0f), v(16 * d, 1.0f), q(d, 1.0f), out(d, NAN);
  KvSpan span{0, 0, 4, 10};  // keys at positions 10..13
  AttentionTask task;
  task.q = q.data();
  task.out = out.data();
  task.q_stride = task.out_stride = d;
  task.num_queries = 1;
  task.first_query_pos = 5;  // before every key
  task.spans = &span;
  task.num_spans = 1;
  task.k_base = k.data();
  task.v_base = v.data();
  task.page_stride = 16 * d;
  PagedAttention({d, 1.0f, {&task, 1}}, nullptr);
  for (float x : out) EXPECT_EQ(x, 0.0f);
}

TEST(PagedAttentionTest, StreamingHeadsSkipTilesOutsideTheirWindow) {
  const int d = 4, page = 16;
  const int64_t kv_len = 1024;
  std::vector<float> k(kv_len * d, 0.5f), v(kv_len * d, 0.5f), q(d, 1.0f), out(d);
  std::vector<KvSpan> spans;
  for (int64_t p = 0; p < kv_len / page; ++p) {
    spans.push_back({static_cast<int32_t>(p), 0, page, p * page});
  }
  AttentionTask task;
  task.q = q.data();
  task.out = out.data();
  task.q_stride = task.out_stride = d;
  task.num_queries = 1;
  task.first_query_pos = kv_len - 1;
  task.spans = spans.data();
  task.num_spans = static_cast<int32_t>(spans.size());
  task.k_base = k.data();
  task.v_base = v.data();
  task.page_stride = page * d;
  task.window = {true, 16, 32};
  AttentionStats stats;
  PagedAttention({d, 1.0f, {&task, 1}}, nullptr, &stats);
  EXPECT_EQ(stats.tiles_total, 64);
  EXPECT_EQ(stats.tiles_visited, 1 + 2);  // sink page + the two pages of keys 992..1023
}

}  // namespace
}  // namespace lserve::cpu
