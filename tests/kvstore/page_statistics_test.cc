// Invariants 3 and 4 of DESIGN.md §3 on mixed-length batches with chunked prefill and
// decode appends: stored kmax/kmin equal the min/max recomputed over every logical page,
// and each logical page's score bounds q.k of every key in it (float32, q.k summed in the
// scorer's order).
#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/cpu/page_score.h"
#include "tests/kvstore/kv_test_util.h"

namespace lserve {
namespace {

const std::vector<int64_t> kLengths = {1, 63, 64, 65, 1000, 4097};

KvStoreConfig MixedConfig(int page_size, int logical_page_size) {
  KvStoreConfig config;
  config.num_layers = 3;
  config.num_kv_heads = 4;
  config.head_dim = 16;
  config.page_size = page_size;
  config.logical_page_size = logical_page_size;
  config.num_dense_pages = 2000;
  config.num_streaming_pages = 400;
  // Layer 2 has no streaming head at all; layer 1 only one dense head.
  config.layout = HeadLayout::FromStreamingMask(
      {{false, true, false, true}, {true, true, false, true}, {false, false, false, false}});
  config.sink = 20;
  config.prefill_local = 256;
  config.decode_local = 64;
  config.max_chunk_tokens = 300;
  return config;
}

// Prefills every sequence in interleaved random chunks, then decodes each a few steps.
void FillMixedBatch(testing::KvDriver& driver) {
  std::vector<int64_t> done(kLengths.size(), 0);
  std::uniform_int_distribution<int64_t> chunk(1, 300);
  for (bool progress = true; progress;) {
    progress = false;
    for (size_t s = 0; s < kLengths.size(); ++s) {
      if (done[s] >= kLengths[s]) continue;
      const int64_t n = std::min(kLengths[s] - done[s], chunk(driver.rng()));
      driver.Append(static_cast<SeqId>(s), n, false);
      done[s] += n;
      progress = true;
    }
  }
  for (int step = 0; step < 37; ++step) {
    for (size_t s = 0; s < kLengths.size(); ++s) driver.Append(static_cast<SeqId>(s), 1, true);
  }
}

class PageStatisticsTest : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(PageStatisticsTest, StoredMinMaxEqualRecomputedOverEveryLogicalPage) {
  const auto [page_size, logical] = GetParam();
  testing::KvDriver driver(MixedConfig(page_size, logical));
  FillMixedBatch(driver);
  const KvStore& store = driver.store();
  const int d = store.config().head_dim;
  int64_t pages_checked = 0;
  for (size_t s = 0; s < kLengths.size(); ++s) {
    const SeqId seq = static_cast<SeqId>(s);
    const int64_t len = *store.tables().Length(seq);
    ASSERT_EQ(len, kLengths[s] + 37);
    const auto& table = store.tables().DensePages(seq);
    for (int layer = 0; layer < 3; ++layer) {
      const auto& heads = store.layout().layers[layer];
      for (int h = 0; h < 4; ++h) {
        if (heads.streaming[h]) continue;
        for (int64_t first = 0; first < len; first += logical) {
          const int64_t last = std::min(len, first + logical);
          const PageId page = table[first / page_size];
          const int64_t logical_page = (first % page_size) / logical;
          const float* kmax = driver.KeyMax(layer, page, heads.slot[h], logical_page);
          const float* kmin = driver.KeyMin(layer, page, heads.slot[h], logical_page);
          for (int c = 0; c < d; ++c) {
            float lo = driver.Key(seq, layer, first, h)[c], hi = lo;
            for (int64_t pos = first + 1; pos < last; ++pos) {
              lo = std::min(lo, driver.Key(seq, layer, pos, h)[c]);
              hi = std::max(hi, driver.Key(seq, layer, pos, h)[c]);
            }
            ASSERT_EQ(kmax[c], hi) << "seq " << seq << " pos " << first;
            ASSERT_EQ(kmin[c], lo) << "seq " << seq << " pos " << first;
          }
          ++pages_checked;
        }
      }
    }
  }
  EXPECT_GT(pages_checked, 1000);
}

TEST_P(PageStatisticsTest, LogicalPageScoreBoundsEveryKeyInThePage) {
  const auto [page_size, logical] = GetParam();
  testing::KvDriver driver(MixedConfig(page_size, logical), 5);
  FillMixedBatch(driver);
  const KvStore& store = driver.store();
  const int d = store.config().head_dim;
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int trial = 0; trial < 4; ++trial) {
    std::vector<float> q(d);
    for (float& x : q) x = normal(driver.rng());
    for (size_t s = 0; s < kLengths.size(); ++s) {
      const SeqId seq = static_cast<SeqId>(s);
      const int64_t len = *store.tables().Length(seq);
      const auto& table = store.tables().DensePages(seq);
      for (int layer = 0; layer < 3; ++layer) {
        const auto& heads = store.layout().layers[layer];
        for (int h = 0; h < 4; ++h) {
          if (heads.streaming[h]) continue;
          for (int64_t pos = 0; pos < len; ++pos) {
            const PageId page = table[pos / page_size];
            const int64_t logical_page = (pos % page_size) / logical;
            const float score = cpu::LogicalPageScore(
                q.data(), driver.KeyMax(layer, page, heads.slot[h], logical_page),
                driver.KeyMin(layer, page, heads.slot[h], logical_page), d);
            const float* k = driver.Key(seq, layer, pos, h);
            const float dot = cpu::ScoreOrderDot(q.data(), k, d);
            ASSERT_GE(score, dot) << "seq " << seq << " layer " << layer << " pos " << pos;
          }
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(PageSizes, PageStatisticsTest,
                         ::testing::Values(std::pair{16, 16}, std::pair{32, 16}, std::pair{64, 16},
                                           std::pair{128, 16}, std::pair{64, 8}),
                         [](const auto& info) {
                           return absl::StrCat("P", info.param.first, "L", info.param.second);
                         });

}  // namespace
}  // namespace lserve

namespace lserve {
namespace {

// A logical page holding a single key has kmax = kmin = k, so its score equals q.k up to
// rounding: the tightest case of the float32 bound.
TEST(PageScoreBoundTest, HoldsExactlyForSingleKeyPages) {
  std::mt19937 rng(23);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  for (int d : {16, 64, 128, 100}) {
    std::vector<float> q(d), k(d);
    for (int trial = 0; trial < 20000; ++trial) {
      for (int c = 0; c < d; ++c) {
        q[c] = normal(rng);
        k[c] = normal(rng);
      }
      ASSERT_GE(cpu::LogicalPageScore(q.data(), k.data(), k.data(), d),
                cpu::ScoreOrderDot(q.data(), k.data(), d))
          << "d " << d << " trial " << trial;
    }
  }
}

}  // namespace
}  // namespace lserve
