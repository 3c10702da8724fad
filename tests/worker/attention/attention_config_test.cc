#include "worker/attention/attention_config.h"

#include <cmath>
#include <string>

#include "gtest/gtest.h"

namespace lserve {
namespace {

TEST(SparseAttentionConfigTest, DefaultsAreLServesAndValid) {
  const SparseAttentionConfig config;
  EXPECT_TRUE(ValidateSparseAttentionConfig(config).ok());
  EXPECT_EQ(config.streaming_ratio, 0.5f);
  EXPECT_EQ(config.sink, 128);
  EXPECT_EQ(config.prefill_local, 8192);
  EXPECT_EQ(config.decode_local, 256);
  EXPECT_EQ(config.page_size, 64);
  EXPECT_EQ(config.logical_page_size, 16);
  EXPECT_EQ(config.token_budget, 4096);
  EXPECT_EQ(config.BudgetPages(), 64);
  EXPECT_EQ(config.reuse_interval, 4);
  EXPECT_TRUE(ValidateSparseAttentionConfig(SparseAttentionConfig::Dense()).ok());
  EXPECT_FALSE(SparseAttentionConfig::Dense().streaming_heads);
  EXPECT_FALSE(SparseAttentionConfig::Dense().page_selection);
}

TEST(SparseAttentionConfigTest, RejectsValuesThatDoNotFit) {
  auto rejected = [](auto mutate) {
    SparseAttentionConfig config;
    mutate(config);
    const absl::Status status = ValidateSparseAttentionConfig(config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    return std::string(status.message());
  };
  EXPECT_NE(rejected([](auto& c) { c.streaming_ratio = 1.5f; }).find("streaming_ratio"),
            std::string::npos);
  rejected([](auto& c) { c.streaming_ratio = -0.1f; });
  rejected([](auto& c) { c.streaming_ratio = NAN; });
  EXPECT_NE(rejected([](auto& c) { c.page_size = 48; }).find("page_size"), std::string::npos);
  rejected([](auto& c) { c.logical_page_size = 24; });
  rejected([](auto& c) { c.logical_page_size = 0; });
  rejected([](auto& c) { c.sink = -1; });
  rejected([](auto& c) { c.decode_local = 0; });
  rejected([](auto& c) { c.decode_local = 10000; });  // beyond the prefill window
  rejected([](auto& c) { c.token_budget = 32; });     // less than one page
  rejected([](auto& c) { c.reuse_interval = 0; });
}

// Selection starts only once the history exceeds the budget in tokens: a budget that is
// not a multiple of the page size still reads everything while it fits (invariant 2).
TEST(SparseAttentionConfigTest, SelectsPagesOnlyPastTheBudgetInTokens) {
  SparseAttentionConfig config;
  config.page_size = 32;
  config.token_budget = 100;
  ASSERT_TRUE(ValidateSparseAttentionConfig(config).ok());
  EXPECT_EQ(config.BudgetPages(), 3);
  for (int64_t kv_len = 1; kv_len <= 100; ++kv_len) EXPECT_FALSE(config.SelectsPages(kv_len, true));
  EXPECT_TRUE(config.SelectsPages(101, true));
  EXPECT_FALSE(config.SelectsPages(5000, false));  // prefill never selects
  config.page_selection = false;
  EXPECT_FALSE(config.SelectsPages(5000, true));
}

TEST(SparseAttentionConfigTest, ParsesScoringModes) {
  PageScoring scoring;
  ASSERT_TRUE(ParsePageScoring("kv_head", &scoring).ok());
  EXPECT_EQ(scoring, PageScoring::kPerKvHead);
  ASSERT_TRUE(ParsePageScoring("query_head", &scoring).ok());
  EXPECT_EQ(scoring, PageScoring::kPerQueryHead);
  EXPECT_EQ(ParsePageScoring("per_token", &scoring).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lserve
