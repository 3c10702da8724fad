// HybridAttention (one layer of the engine's attention) on mixed-length batches of odd
// lengths with chunked prefill: invariant 1 (sparsity off is exactly causal softmax
// attention) and invariant 2 (a budget covering the history equals dense decode).
#include "worker/attention/hybrid_attention.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kvstore/naive_hybrid.h"
#include "tests/worker/attention/attention_test_util.h"

namespace lserve {
namespace {

constexpr int kHeads = 4, kKvHeads = 2, kDim = 16;
const std::vector<int64_t> kLengths = {1, 63, 64, 65, 1000, 4097};

KvStoreConfig DenseLayout() {
  KvStoreConfig config;
  config.num_layers = 1;
  config.num_kv_heads = kKvHeads;
  config.head_dim = kDim;
  config.page_size = 16;
  config.logical_page_size = 16;
  config.num_dense_pages = 1000;
  return config;
}

// Three KV heads, the middle one streaming (sink 12, windows 100 / 30), pages of 16 with
// logical pages of 8; and the attention config that matches it with a 64-token budget.
KvStoreConfig HybridLayout() {
  KvStoreConfig kv = DenseLayout();
  kv.num_kv_heads = 3;
  kv.layout = HeadLayout::FromStreamingMask({{false, true, false}});
  kv.logical_page_size = 8;
  kv.num_streaming_pages = 200;
  kv.sink = 12;
  kv.prefill_local = 100;
  kv.decode_local = 30;
  kv.max_chunk_tokens = 300;
  return kv;
}

SparseAttentionConfig HybridConfig() {
  SparseAttentionConfig config;
  config.page_size = 16;
  config.logical_page_size = 8;
  config.token_budget = 64;
  config.sink = 12;
  config.prefill_local = 100;
  config.decode_local = 30;
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
  auto attention = testing::MakeAttention(driver, off, kHeads);
  testing::RunLayer(driver, *attention, batch, q.data(), out.data());
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
    testing::RunLayer(driver, *testing::MakeAttention(driver, selecting, kHeads), batch, q.data(),
                      a.data());
    testing::RunLayer(driver, *testing::MakeAttention(driver, dense, kHeads), batch, q.data(),
                      b.data());
    EXPECT_EQ(a, b);
    // A smaller budget really selects: the long sequences' decode outputs change.
    selecting.token_budget = 256;
    testing::RunLayer(driver, *testing::MakeAttention(driver, selecting, kHeads), batch, q.data(),
                      a.data());
    EXPECT_NE(a, b);
  }
}

// Streaming and dense heads together, decoding past a small budget: every query head's
// output equals the naive oracle, with its own query scoring its pages (LServe) or its
// GQA group's max (per KV head), and reused selections on later steps; with selections
// made on the host, and kept in backend memory as on a GPU (SelectionRows).
TEST(HybridAttentionTest, HybridDecodeMatchesNaiveOracleForEveryQueryHead) {
  const KvStoreConfig kv = HybridLayout();
  const int heads = 6;  // GQA group of 2
  for (int run = 0; run < 4; ++run) {
    const PageScoring scoring = run % 2 == 0 ? PageScoring::kPerQueryHead : PageScoring::kPerKvHead;
    const bool in_backend_memory = run >= 2;
    testing::KvDriver driver(kv, 31);
    testing::OpaqueCpuBackend opaque(&driver.backend());
    SparseAttentionConfig config = HybridConfig();
    config.reuse_interval = 3;
    config.scoring = scoring;
    auto attention =
        testing::MakeAttention(driver, config, heads, in_backend_memory ? &opaque : nullptr);
    const std::vector<int64_t> lengths = {70, 333};
    for (size_t s = 0; s < lengths.size(); ++s) driver.Prefill(s, lengths[s], 300);
    // The selection each head uses, refreshed on the reuse schedule like the engine's.
    std::map<std::pair<SeqId, int>, std::vector<int64_t>> in_use;
    std::normal_distribution<float> normal(0.0f, 1.5f);
    for (int64_t step = 0; step < 7; ++step) {
      std::vector<AttentionSequence> batch;
      for (size_t s = 0; s < lengths.size(); ++s) {
        driver.Append(s, 1, true);
        batch.push_back({static_cast<SeqId>(s), static_cast<int64_t>(s), 1,
                         *driver.tables().Length(s) - 1, true, step});
      }
      std::vector<float> q(batch.size() * heads * kDim), out(q.size(), NAN);
      for (float& x : q) x = normal(driver.rng());
      testing::RunLayer(driver, *attention, batch, q.data(), out.data());
      for (const AttentionSequence& a : batch) {
        const int64_t len = a.start_pos + 1;
        for (int h = 0; h < heads; ++h) {
          const int kv_head = h / 2;
          const float* qh = q.data() + (a.q_row * heads + h) * kDim;
          std::vector<int64_t> positions;
          if (kv_head == 1) {
            positions = testing::StreamingWindow(12, 30, len - 1);
          } else {
            const int key = scoring == PageScoring::kPerKvHead ? kv_head : h;
            auto& selection = in_use[{a.seq, key}];
            if (step % 3 == 0) {
              std::vector<const float*> queries = {qh};
              if (scoring == PageScoring::kPerKvHead) {
                queries = {q.data() + (a.q_row * heads + 2 * kv_head) * kDim,
                           q.data() + (a.q_row * heads + 2 * kv_head + 1) * kDim};
              }
              selection = testing::NaiveSelectedPositions(driver, a.seq, 0, kv_head, queries, len,
                                                          16, 8, 4, kDim);
            }
            // Pages of the selection in use, plus the newest page when it is reused.
            std::set<int64_t> pages = {(len - 1) / 16};
            for (int64_t pos : selection) pages.insert(pos / 16);
            for (int64_t page : pages) {
              for (int64_t pos = page * 16; pos < std::min(len, (page + 1) * 16); ++pos) {
                positions.push_back(pos);
              }
            }
            if (len <= 64) positions = testing::StreamingWindow(len, 1, len - 1);
          }
          const auto expected =
              testing::NaiveAttention(driver, a.seq, 0, kv_head, qh, positions, kDim);
          for (int c = 0; c < kDim; ++c) {
            ASSERT_NEAR(out[(a.q_row * heads + h) * kDim + c], expected[c], 2e-5)
                << PageScoringName(scoring) << (in_backend_memory ? " rows" : " host") << " step "
                << step << " seq " << a.seq << " head " << h;
          }
        }
      }
    }
    // Selections made in backend memory never reach the host's cache.
    EXPECT_GT(attention->selection_recomputations(), 0);
    EXPECT_EQ(attention->selector().Current(1, 0, 0).empty(), in_backend_memory);
  }
}

// A budget that is not a multiple of the page size (page 32, budget 100) keeps every page
// while the history fits, so decode equals dense decode bitwise at 97-100 tokens, and
// selects from 101 tokens on (invariant 2).
TEST(HybridAttentionTest, BudgetNotAPageMultipleStillEqualsDenseWhileTheHistoryFits) {
  KvStoreConfig kv = DenseLayout();
  kv.page_size = 32;
  testing::KvDriver driver(kv, 23);
  SparseAttentionConfig dense = SparseAttentionConfig::Dense();
  dense.page_size = 32;
  dense.logical_page_size = 16;
  SparseAttentionConfig selecting = dense;
  selecting.page_selection = true;
  selecting.token_budget = 100;
  selecting.reuse_interval = 1;
  driver.Prefill(0, 96, 40);
  auto sparse_attention = testing::MakeAttention(driver, selecting, kHeads);
  auto dense_attention = testing::MakeAttention(driver, dense, kHeads);
  for (int64_t step = 0; step < 6; ++step) {
    driver.Append(0, 1, true);
    const int64_t len = *driver.tables().Length(0);
    const std::vector<AttentionSequence> batch = {{0, 0, 1, len - 1, true, step}};
    const std::vector<float> q = RandomQueries(driver, 1);
    std::vector<float> a(q.size(), NAN), b(q.size(), NAN);
    testing::RunLayer(driver, *sparse_attention, batch, q.data(), a.data());
    testing::RunLayer(driver, *dense_attention, batch, q.data(), b.data());
    if (len <= 100) {
      EXPECT_EQ(a, b) << "history of " << len << " tokens";
    } else {
      EXPECT_NE(a, b) << "history of " << len << " tokens";
    }
  }
}

// Decode rows reading selected pages and prefill chunks in one step, run as one launch
// (host selections) and as two launches over slices of the batch with selections kept in
// backend memory (the CUDA backend's way): the outputs are bitwise equal.
TEST(HybridAttentionTest, DecodeAndPrefillSlicesEqualOneLaunch) {
  const KvStoreConfig kv = HybridLayout();
  const int heads = 6;
  testing::KvDriver driver(kv, 41);
  testing::OpaqueCpuBackend split(&driver.backend(), /*split_rows=*/true);
  const SparseAttentionConfig config = HybridConfig();
  auto one_launch = testing::MakeAttention(driver, config, heads);
  auto two_launches = testing::MakeAttention(driver, config, heads, &split);
  const std::vector<int64_t> lengths = {333, 500, 80, 260};
  for (size_t s = 0; s < lengths.size(); ++s) driver.Prefill(s, lengths[s], 300);
  // Two decode tokens first (past the budget: they select), then chunks of 37 and 20.
  std::vector<AttentionSequence> batch;
  int64_t row = 0;
  for (size_t s = 0; s < lengths.size(); ++s) {
    const bool decode = s < 2;
    const int64_t n = decode ? 1 : (s == 2 ? 37 : 20);
    driver.Append(s, n, decode);
    batch.push_back({static_cast<SeqId>(s), row, n, lengths[s], decode, 0});
    row += n;
  }
  std::normal_distribution<float> normal(0.0f, 1.5f);
  std::vector<float> q(row * heads * kDim), a(q.size(), NAN), b(q.size(), NAN);
  for (float& x : q) x = normal(driver.rng());
  testing::RunLayer(driver, *one_launch, batch, q.data(), a.data());
  testing::RunLayer(driver, *two_launches, batch, q.data(), b.data());
  EXPECT_EQ(split.split_launches(), 1);
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(std::bit_cast<uint32_t>(a[i]), std::bit_cast<uint32_t>(b[i])) << "element " << i;
  }
}

}  // namespace
}  // namespace lserve
