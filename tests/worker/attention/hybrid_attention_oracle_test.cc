// The whole sparse read path — ring storage, page statistics, scoring, selection, the
// page tables and the attention kernel — against an independent naive implementation
// working on the contiguous keys of each sequence of a mixed-length batch (invariant 7 of
// DESIGN.md §3).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kvstore/naive_hybrid.h"
#include "tests/worker/attention/attention_test_util.h"

namespace lserve {
namespace {

constexpr int kDim = 16;
constexpr int kPage = 16;
constexpr int kLogical = 8;
constexpr int64_t kSink = 10, kPrefillLocal = 100, kDecodeLocal = 40, kBudgetPages = 4;

KvStoreConfig HybridConfig() {
  KvStoreConfig config;
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

TEST(HybridAttentionOracleTest, MixedLengthBatchMatchesNaiveHybridAttention) {
  const std::vector<int64_t> lengths = {1, 63, 64, 65, 300, 777};
  testing::KvDriver driver(HybridConfig(), 11);
  SparseAttentionConfig config = AttentionConfigFor(driver.store().config());
  config.token_budget = kBudgetPages * kPage;
  config.reuse_interval = 1;  // fresh scores every step
  auto attention = testing::MakeAttention(driver, config, 2);
  for (size_t s = 0; s < lengths.size(); ++s) driver.Prefill(s, lengths[s], 64);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  int checked = 0;
  for (int step = 0; step < 25; ++step) {
    for (size_t s = 0; s < lengths.size(); ++s) {
      driver.Append(s, 1, true);
      const int64_t len = *driver.tables().Length(s);
      std::vector<float> q(kDim);
      for (float& x : q) x = 2.0f * normal(driver.rng());
      // Query head 0 reads the dense KV head, query head 1 the streaming one.
      std::vector<float> q_row = q;
      q_row.insert(q_row.end(), q.begin(), q.end());
      std::vector<float> out(2 * kDim, NAN);
      testing::RunLayer(driver, *attention, {{static_cast<SeqId>(s), 0, 1, len - 1, true, step}},
                        q_row.data(), out.data());
      const auto dense_ref = testing::NaiveAttention(
          driver, s, 0, 0, q.data(),
          testing::NaiveSelectedPositions(driver, s, 0, 0, {q.data()}, len, kPage, kLogical,
                                          kBudgetPages, kDim),
          kDim);
      const auto streaming_ref = testing::NaiveAttention(
          driver, s, 0, 1, q.data(), testing::StreamingWindow(kSink, kDecodeLocal, len - 1), kDim);
      for (int c = 0; c < kDim; ++c) {
        ASSERT_NEAR(out[c], dense_ref[c], 1e-5) << "seq " << s << " len " << len;
        ASSERT_NEAR(out[kDim + c], streaming_ref[c], 1e-5) << "seq " << s << " len " << len;
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 150);
}

}  // namespace
}  // namespace lserve
