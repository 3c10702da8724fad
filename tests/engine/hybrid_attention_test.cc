// HybridAttention (one layer of the engine's attention) on mixed-length batches of odd
// lengths with chunked prefill: invariant 1 (sparsity off is exactly causal softmax
// attention) and invariant 2 (a budget covering the history equals dense decode).
#include "worker/hybrid_attention.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kvstore/kv_test_util.h"

namespace lserve {
namespace {

constexpr int kHeads = 4, kKvHeads = 2, kDim = 16;
const std::vector<int64_t> kLengths = {1, 63, 64, 65, 1000, 4097};

KvCacheConfig DenseLayout() {
  KvCacheConfig config;
  config.num_layers = 1;
  config.num_kv_heads = kKvHeads;
  config.head_dim = kDim;
  config.page_size = 16;
  config.logical_page_size = 16;
  config.num_dense_pages = 1000;
  return config;
}

// Builds the batch: every sequence prefilled to its length, then one more step that is a
// 37-token chunk for even sequences and a decode token for odd ones.
std::vector<AttentionSequence> MixedBatch(testing::KvDriver& driver) {
  std::vector<AttentionSequence> batch;
  int64_t row = 0;
  for (size_t s = 0; s < kLengths.size(); ++s) {
    driver.Prefill(s, kLengths[s], 300);
    const bool decode = s % 2 == 1;
    const int64_t n = decode ? 1 : 37;
    driver.Append(s, n, decode);
    batch.push_back({static_cast<SeqId>(s), row, n, kLengths[s], decode, 0});
    row += n;
  }
  return batch;
}

std::vector<float> RandomQueries(testing::KvDriver& driver, int64_t rows) {
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<float> q(rows * kHeads * kDim);
  for (float& x : q) x = normal(driver.rng());
  return q;
}

TEST(HybridAttentionTest, SparsityOffIsExactlyCausalSoftmaxOnMixedBatch) {
  testing::KvDriver driver(DenseLayout(), 21);
  const auto batch = MixedBatch(driver);
  const int64_t rows = batch.back().q_row + batch.back().num_queries;
  const std::vector<float> q = RandomQueries(driver, rows);
  std::vector<float> out(q.size(), NAN);
  SparseAttentionConfig off;
  off.streaming_ratio = 0.0f;
  off.page_selection = false;
  off.page_size = 16;
  off.logical_page_size = 16;
  HybridAttention attention(&driver.cache(), off, kHeads);
  attention.Run(0, batch, q.data(), out.data(), nullptr);
  for (const AttentionSequence& s : batch) {
    for (int64_t i = 0; i < s.num_queries; ++i) {
      const int64_t p = s.start_pos + i;
      for (int h = 0; h < kHeads; ++h) {
        const float* qi = q.data() + ((s.q_row + i) * kHeads + h) * kDim;
        std::vector<double> scores(p + 1);
        double max_score = -INFINITY;
        for (int64_t j = 0; j <= p; ++j) {
          const float* k = driver.Key(s.seq, 0, j, h / 2);
          double dot = 0.0;
          for (int c = 0; c < kDim; ++c) dot += double{qi[c]} * k[c];
          scores[j] = dot / std::sqrt(double{kDim});
          max_score = std::max(max_score, scores[j]);
        }
        std::vector<double> expected(kDim, 0.0);
        double sum = 0.0;
        for (int64_t j = 0; j <= p; ++j) {
          const double w = std::exp(scores[j] - max_score);
          sum += w;
          for (int c = 0; c < kDim; ++c) expected[c] += w * driver.Value(s.seq, 0, j, h / 2)[c];
        }
        const float* got = out.data() + ((s.q_row + i) * kHeads + h) * kDim;
        for (int c = 0; c < kDim; ++c) {
          ASSERT_NEAR(got[c], expected[c] / sum, 2e-5)
              << "seq " << s.seq << " query " << p << " head " << h;
        }
      }
    }
  }
}

TEST(HybridAttentionTest, BudgetCoveringHistoryEqualsDenseDecodeOnMixedBatch) {
  testing::KvDriver driver(DenseLayout(), 22);
  const auto batch = MixedBatch(driver);
  const int64_t rows = batch.back().q_row + batch.back().num_queries;
  const std::vector<float> q = RandomQueries(driver, rows);
  SparseAttentionConfig dense = SparseAttentionConfig::Dense();
  dense.page_size = dense.logical_page_size = 16;
  for (PageScoring scoring : {PageScoring::kPerQueryHead, PageScoring::kPerKvHead}) {
    SparseAttentionConfig selecting = dense;
    selecting.page_selection = true;
    selecting.token_budget = 4096 + 64;  // every page of the longest sequence
    selecting.scoring = scoring;
    std::vector<float> a(q.size(), NAN), b(q.size(), NAN);
    HybridAttention(&driver.cache(), selecting, kHeads).Run(0, batch, q.data(), a.data(), nullptr);
    HybridAttention(&driver.cache(), dense, kHeads).Run(0, batch, q.data(), b.data(), nullptr);
    EXPECT_EQ(a, b);
    // A smaller budget really selects: the long sequences' decode outputs change.
    selecting.token_budget = 256;
    HybridAttention(&driver.cache(), selecting, kHeads).Run(0, batch, q.data(), a.data(), nullptr);
    EXPECT_NE(a, b);
  }
}

}  // namespace
}  // namespace lserve
