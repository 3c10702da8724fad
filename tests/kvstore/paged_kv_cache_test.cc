#include "kvstore/paged_kv_cache.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace lserve {
namespace {

KvCacheConfig SmallConfig() {
  KvCacheConfig config;
  config.num_layers = 2;
  config.num_kv_heads = 2;
  config.head_dim = 4;
  config.page_size = 8;
  config.logical_page_size = 4;
  config.num_dense_pages = 16;
  return config;
}

std::vector<float> RandomRows(int64_t n, int64_t width, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> rows(n * width);
  for (float& v : rows) v = dist(rng);
  return rows;
}

TEST(PagedKvCacheTest, DenseSpansReadBackWhatWasWritten) {
  auto cache = *PagedKvCache::Create(SmallConfig());
  ASSERT_TRUE(cache->AddSequence(3).ok());
  const int width = 2 * 4;
  const auto k = RandomRows(21, width, 1), v = RandomRows(21, width, 2);
  // Two chunks: 13 tokens, then 8.
  ASSERT_TRUE(cache->Extend(3, 13, false).ok());
  cache->Write(1, 3, 0, 13, k.data(), v.data(), width);
  ASSERT_TRUE(cache->Commit(3, 13).ok());
  ASSERT_TRUE(cache->Extend(3, 8, false).ok());
  cache->Write(1, 3, 13, 8, k.data() + 13 * width, v.data() + 13 * width, width);
  ASSERT_TRUE(cache->Commit(3, 8).ok());
  std::vector<cpu::KvSpan> spans;
  cache->DenseSpans(3, 21, &spans);
  ASSERT_EQ(spans.size(), 3u);
  EXPECT_EQ(spans[2].num_rows, 5);
  for (const auto& span : spans) {
    for (int r = 0; r < span.num_rows; ++r) {
      const int64_t pos = span.first_pos + r;
      for (int h = 0; h < 2; ++h) {
        const float* stored = cache->DenseK(1) + span.page * cache->DensePageStride(1) +
                              h * cache->HeadStride() + (span.row_begin + r) * 4;
        for (int c = 0; c < 4; ++c) EXPECT_EQ(stored[c], k[pos * width + h * 4 + c]);
      }
    }
  }
  EXPECT_EQ(cache->dense_allocator().num_used(), 3);
  ASSERT_TRUE(cache->FreeSequence(3).ok());
  EXPECT_EQ(cache->dense_allocator().num_used(), 0);
}

TEST(PagedKvCacheTest, ExtendIsAllOrNothing) {
  KvCacheConfig config = SmallConfig();
  config.num_dense_pages = 3;
  auto cache = *PagedKvCache::Create(config);
  ASSERT_TRUE(cache->AddSequence(1).ok());
  EXPECT_EQ(cache->Extend(1, 25, false).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(cache->dense_allocator().num_used(), 0);
  EXPECT_TRUE(cache->Extend(1, 24, false).ok());
}

TEST(PagedKvCacheTest, RejectsBadConfigsAndUnknownSequences) {
  KvCacheConfig config = SmallConfig();
  config.logical_page_size = 3;
  EXPECT_EQ(PagedKvCache::Create(config).status().code(), absl::StatusCode::kInvalidArgument);
  auto cache = *PagedKvCache::Create(SmallConfig());
  EXPECT_EQ(cache->Extend(9, 1, false).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(cache->FreeSequence(9).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(cache->AddSequence(9).ok());
  EXPECT_EQ(cache->AddSequence(9).code(), absl::StatusCode::kAlreadyExists);
}

}  // namespace
}  // namespace lserve
