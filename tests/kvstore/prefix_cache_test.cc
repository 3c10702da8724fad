// Prefix caching at the KV-store level: matching whole pages of a token chain, sharing
// pages with reference counts, copy on write in the streaming ring, and eviction.
#include "kvstore/prefix_cache.h"

#include <cstring>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kvstore/kv_test_util.h"

namespace lserve {
namespace {

KvStoreConfig Config(int64_t dense_pages, int64_t streaming_pages) {
  KvStoreConfig config;
  config.num_layers = 2;
  config.num_kv_heads = 2;
  config.head_dim = 4;
  config.page_size = 8;
  config.logical_page_size = 4;
  config.layout = HeadLayout::FromStreamingMask({{false, true}, {true, false}});
  config.num_dense_pages = dense_pages;
  config.num_streaming_pages = streaming_pages;
  config.sink = 8;
  config.prefill_local = 16;
  config.decode_local = 8;
  config.max_chunk_tokens = 8;
  return config;
}

std::vector<int32_t> Tokens(int n, int salt) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = (i * 31 + salt) % 97;
  return ids;
}

TEST(PrefixCacheTest, MatchesWholePagesAndLeavesOneTokenToCompute) {
  testing::KvDriver driver(Config(64, 64), 1, /*prefix_caching=*/true);
  PrefixCache& cache = *driver.store().prefix_cache();
  const std::vector<int32_t> prompt = Tokens(40, 1);
  driver.Prefill(1, 40, 8);
  cache.Insert(1, prompt);
  EXPECT_EQ(cache.num_nodes(), 5);
  // Same first 27 tokens, then different: three whole pages match.
  std::vector<int32_t> other = prompt;
  other.resize(27);
  other.push_back(1000);
  PrefixMatch match = cache.Match(other);
  EXPECT_EQ(match.tokens, 24);
  // An identical prompt still leaves its last token to compute: 4 pages, not 5.
  EXPECT_EQ(cache.Match(prompt).tokens, 32);
  EXPECT_EQ(cache.Match(Tokens(40, 2)).tokens, 0);
  ASSERT_TRUE(driver.store().AddSequence(2).ok());
  ASSERT_TRUE(cache.Attach(2, match).ok());
  EXPECT_EQ(*driver.tables().Length(2), 24);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(driver.tables().DensePages(2)[i], driver.tables().DensePages(1)[i]);
    EXPECT_EQ(driver.tables().dense_allocator().ref_count(driver.tables().DensePages(1)[i]), 3);
  }
  EXPECT_TRUE(driver.store().CheckConsistency().ok());
  EXPECT_EQ(cache.stats().hits, 1);
  EXPECT_EQ(cache.stats().hit_tokens, 24);
}

// The second sequence writes past a ring that holds shared pages: the shared pages keep
// the first sequence's values (copy on write), and the cache's references keep them after
// both sequences are gone.
TEST(PrefixCacheTest, StreamingRingCopiesSharedPagesOnWrite) {
  testing::KvDriver driver(Config(64, 64), 2, true);
  PrefixCache& cache = *driver.store().prefix_cache();
  const std::vector<int32_t> prompt = Tokens(64, 3);
  driver.Prefill(1, 32, 8);
  cache.Insert(1, prompt);
  const PrefixMatch match = cache.Match(prompt);
  ASSERT_EQ(match.tokens, 32);
  std::vector<std::vector<float>> before;
  for (int64_t i = 0; i < 4; ++i) {
    ASSERT_NE(match.streaming[i], kNoPage) << i;
    std::vector<uint8_t> bytes(driver.store().streaming_pool().PageBytesAllLayers());
    ASSERT_TRUE(driver.store().streaming_pool().ReadPage(match.streaming[i], bytes.data()).ok());
    before.emplace_back(reinterpret_cast<float*>(bytes.data()),
                        reinterpret_cast<float*>(bytes.data() + bytes.size()));
  }
  ASSERT_TRUE(driver.store().AddSequence(2).ok());
  ASSERT_TRUE(cache.Attach(2, match).ok());
  driver.Prefill(2, 48, 8);  // wraps the 4-slot ring several times
  for (int i = 0; i < 20; ++i) driver.Append(2, 1, true);
  ASSERT_TRUE(driver.store().CheckConsistency().ok());
  ASSERT_TRUE(driver.store().FreeSequence(1).ok());
  ASSERT_TRUE(driver.store().FreeSequence(2).ok());
  for (int64_t i = 0; i < 4; ++i) {
    std::vector<uint8_t> bytes(driver.store().streaming_pool().PageBytesAllLayers());
    ASSERT_TRUE(driver.store().streaming_pool().ReadPage(match.streaming[i], bytes.data()).ok());
    EXPECT_EQ(0, std::memcmp(bytes.data(), before[i].data(), bytes.size())) << "page index " << i;
  }
  const KvUsage usage = driver.store().Usage();
  EXPECT_EQ(usage.dense_used, 0);
  EXPECT_EQ(usage.streaming_used, 0);
  EXPECT_GT(usage.dense_cached, 0);
  cache.Clear();
  EXPECT_EQ(driver.tables().dense_allocator().num_used(), 0);
  EXPECT_EQ(driver.tables().streaming_allocator().num_used(), 0);
}

// Without the streaming pages of the prefill window at its end, a match is cut back to a
// boundary whose window is still cached.
TEST(PrefixCacheTest, MatchEndsWhereTheStreamingWindowIsCached) {
  testing::KvDriver driver(Config(64, 64), 3, true);
  PrefixCache& cache = *driver.store().prefix_cache();
  const std::vector<int32_t> prompt = Tokens(80, 5);
  driver.Prefill(1, 72, 8);
  cache.Insert(1, prompt);
  ASSERT_EQ(cache.Match(prompt).tokens, 72);
  ASSERT_TRUE(driver.store().FreeSequence(1).ok());
  // The ring held only the sink page and the last four ring pages when they were cached.
  EXPECT_EQ(cache.Reclaimable(KvPoolKind::kStreaming), 5);
  EXPECT_EQ(cache.Reclaim(KvPoolKind::kStreaming, 5), 5);
  // Without the sink page no boundary is usable.
  EXPECT_EQ(cache.Match(prompt).tokens, 0);
  EXPECT_TRUE(driver.store().CheckConsistency().ok());
}

// When a pool runs out, Extend takes back pages only the cache holds, least recently used
// leaves first, and leaves pages that sequences share alone.
TEST(PrefixCacheTest, FullPoolsEvictCachedPagesLeafFirst) {
  testing::KvDriver driver(Config(12, 40), 4, true);
  PrefixCache& cache = *driver.store().prefix_cache();
  driver.Prefill(1, 48, 8);
  cache.Insert(1, Tokens(48, 7));
  driver.Prefill(2, 32, 8);
  cache.Insert(2, Tokens(32, 8));
  ASSERT_TRUE(driver.store().FreeSequence(1).ok());
  EXPECT_EQ(driver.tables().dense_allocator().num_free(), 2);
  EXPECT_EQ(driver.tables().Available().dense, 8);
  // Sequence 3's 5 pages: the 2 free ones and 3 from the end of sequence 1's chain.
  driver.Prefill(3, 40, 8);
  EXPECT_EQ(cache.stats().evicted_pages, 3);
  // The start of that chain is still cached (as far as its streaming window reaches), and
  // sequence 2's pages, which it still uses, were never candidates.
  EXPECT_EQ(cache.Match(Tokens(48, 7)).tokens, 8);
  EXPECT_EQ(cache.Match(Tokens(32, 8)).tokens, 24);
  driver.Prefill(3, 24, 8);
  EXPECT_EQ(cache.stats().evicted_pages, 6);
  EXPECT_EQ(cache.Match(Tokens(48, 7)).tokens, 0);
  EXPECT_TRUE(driver.store().CheckConsistency().ok());
  EXPECT_EQ(driver.tables().Extend(3, 8, false).code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace lserve
