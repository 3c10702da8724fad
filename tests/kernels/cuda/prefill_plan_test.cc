// The prefill loop bounds against brute force over every (query, key) pair: the key tiles
// a query tile visits are exactly those holding a visible pair, in increasing order, and
// a tile skips its mask only when every pair in it is visible. Host code: runs everywhere.
#include "kernels/cuda/prefill_plan.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace lserve::cuda {
namespace {

TEST(PrefillPlanHostTest, TilesAreExactlyThoseWithVisiblePairsAndMasksAreExact) {
  std::mt19937 rng(3);
  int checked = 0;
  for (int trial = 0; trial < 4000; ++trial) {
    const bool streaming = trial % 3 != 0;
    const int32_t tile_keys = 16 << (trial % 4);
    const int64_t first = std::uniform_int_distribution<int64_t>(0, 700)(rng);
    const int64_t last = first + std::uniform_int_distribution<int64_t>(0, 200)(rng);
    const int64_t sink = std::uniform_int_distribution<int64_t>(0, 160)(rng);
    const int64_t local = std::uniform_int_distribution<int64_t>(1, 300)(rng);
    const KeyTileRuns runs = PlanKeyTiles(streaming, first, last, sink, local, tile_keys);
    std::vector<int32_t> expected;
    for (int32_t t = 0; int64_t{t} * tile_keys <= last; ++t) {
      bool any = false;
      bool all = true;
      for (int64_t p = first; p <= last; ++p) {
        for (int64_t k = int64_t{t} * tile_keys; k < int64_t{t + 1} * tile_keys; ++k) {
          const bool visible = KeyVisible(streaming, p, k, sink, local);
          any = any || visible;
          all = all && visible;
        }
      }
      if (!any) continue;
      expected.push_back(t);
      ASSERT_EQ(KeyTileNeedsMask(streaming, first, last, sink, local, tile_keys, t), !all)
          << "tile " << t << " first " << first << " last " << last << " sink " << sink << " local "
          << local << " keys " << tile_keys;
    }
    std::vector<int32_t> planned;
    for (int32_t i = 0; i < runs.count(); ++i) planned.push_back(runs.tile(i));
    ASSERT_EQ(planned, expected) << "streaming " << streaming << " first " << first << " last "
                                 << last << " sink " << sink << " local " << local << " keys "
                                 << tile_keys;
    checked += static_cast<int>(planned.size());
  }
  EXPECT_GT(checked, 10000);
}

TEST(PrefillPlanHostTest, StreamingTilesStayBoundedWhateverTheLength) {
  // Sink 128, local 8192, 128-key tiles, 128-query tiles: at most sink + window tiles.
  for (int64_t first : {0LL, 100000LL, 1000000LL}) {
    const KeyTileRuns runs = PlanKeyTiles(true, first, first + 127, 128, 8192, 128);
    EXPECT_LE(runs.count(), 1 + (8192 + 128) / 128 + 1) << first;
  }
  EXPECT_EQ(PlanKeyTiles(false, 1000000, 1000127, 128, 8192, 128).count(), 1000127 / 128 + 1);
}

}  // namespace
}  // namespace lserve::cuda
