// Invariant 6 of DESIGN.md §3: streaming heads read exactly [0, sink) ∪ [len - local, len)
// and, once decoding, hold at most ceil(sink/P) + ceil(local/P) + 1 pages; the ring never
// overwrites a token its window still needs.
#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kvstore/kv_test_util.h"

namespace lserve {
namespace {

struct RingCase {
  int page_size;
  int64_t sink, prefill_local, decode_local, max_chunk;
};

KvStoreConfig RingConfig(const RingCase& c) {
  KvStoreConfig config;
  config.num_layers = 2;
  config.num_kv_heads = 2;
  config.head_dim = 8;
  config.page_size = c.page_size;
  config.logical_page_size = 16;
  config.num_dense_pages = 400;
  config.num_streaming_pages = 200;
  config.layout = HeadLayout::FromStreamingMask({{true, false}, {false, true}});
  config.sink = c.sink;
  config.prefill_local = c.prefill_local;
  config.decode_local = c.decode_local;
  config.max_chunk_tokens = c.max_chunk;
  return config;
}

// Positions a streaming head's query at `query_pos` reads, checking each value read
// against what was written there.
std::set<int64_t> VisiblePositions(testing::KvDriver& driver, SeqId seq, int layer, int kv_head,
                                   int64_t kv_len, int64_t first_query_pos, int64_t query_pos,
                                   int64_t local) {
  const KvStore& store = driver.store();
  testing::HostTables tables(store, {seq});
  EXPECT_EQ(tables.arrays.kv_len[0], kv_len);
  std::vector<cpu::KvSpan> spans;
  cpu::AddStreamingSpans(tables.view, 0, store.config().page_size, first_query_pos, local, &spans);
  const cpu::HeadWindow window{true, store.config().sink, local};
  const int d = store.config().head_dim;
  const int slot = store.layout().layers[layer].slot[kv_head];
  std::set<int64_t> seen;
  for (const cpu::KvSpan& span : spans) {
    for (int r = 0; r < span.num_rows; ++r) {
      const int64_t pos = span.first_pos + r;
      if (!cpu::KeyVisible(window, query_pos, pos)) continue;
      EXPECT_TRUE(seen.insert(pos).second) << "position " << pos << " listed twice";
      const float* stored = driver.StreamingValueRow(layer, span.page, slot, span.row_begin + r);
      const float* written = driver.Value(seq, layer, pos, kv_head);
      for (int c = 0; c < d; ++c) {
        if (stored[c] != written[c]) {
          ADD_FAILURE() << "position " << pos << " was overwritten (len " << kv_len << ")";
          return seen;
        }
      }
    }
  }
  return seen;
}

std::set<int64_t> ExpectedWindow(int64_t sink, int64_t local, int64_t query_pos) {
  std::set<int64_t> expected;
  for (int64_t j = 0; j <= query_pos; ++j) {
    if (j < sink || query_pos - j < local) expected.insert(j);
  }
  return expected;
}

class StreamingRingTest : public ::testing::TestWithParam<RingCase> {};

TEST_P(StreamingRingTest, ReadsExactlyTheWindowAndHoldsBoundedPages) {
  const RingCase c = GetParam();
  testing::KvDriver driver(RingConfig(c), 3);
  const SeqId seq = 4;
  std::uniform_int_distribution<int64_t> chunk(1, c.max_chunk);
  int64_t len = 0;
  while (len < 700) {
    const int64_t n = std::min<int64_t>(700 - len, chunk(driver.rng()));
    driver.Append(seq, n, false);
    for (int64_t q = len; q < len + n; q += std::max<int64_t>(1, n / 5)) {
      ASSERT_EQ(VisiblePositions(driver, seq, 0, 0, len + n, len, q, c.prefill_local),
                ExpectedWindow(c.sink, c.prefill_local, q));
    }
    len += n;
  }
  const int64_t p = c.page_size;
  const int64_t bound = (c.sink + p - 1) / p + (c.decode_local + p - 1) / p + 1;
  for (int step = 0; step < 300; ++step) {
    driver.Append(seq, 1, true);
    ++len;
    ASSERT_LE(driver.tables().StreamingPagesHeld(seq), bound) << "len " << len;
    ASSERT_EQ(driver.tables().streaming_allocator().num_used(),
              driver.tables().StreamingPagesHeld(seq));
    for (int layer : {0, 1}) {
      ASSERT_EQ(VisiblePositions(driver, seq, layer, layer == 0 ? 0 : 1, len, len - 1, len - 1,
                                 c.decode_local),
                ExpectedWindow(c.sink, c.decode_local, len - 1))
          << "len " << len;
    }
  }
  ASSERT_TRUE(driver.store().FreeSequence(seq).ok());
  EXPECT_EQ(driver.tables().streaming_allocator().num_used(), 0);
  EXPECT_EQ(driver.tables().dense_allocator().num_used(), 0);
}

TEST_P(StreamingRingTest, ShortSequencesSeeEverything) {
  const RingCase c = GetParam();
  testing::KvDriver driver(RingConfig(c), 4);
  driver.Append(1, 1, false);
  for (int64_t len = 2; len < 40; ++len) {
    driver.Append(1, 1, true);
    ASSERT_EQ(VisiblePositions(driver, 1, 0, 0, len, len - 1, len - 1, c.decode_local),
              ExpectedWindow(c.sink, c.decode_local, len - 1));
  }
}

INSTANTIATE_TEST_SUITE_P(Windows, StreamingRingTest,
                         ::testing::Values(RingCase{16, 20, 100, 40, 50},
                                           RingCase{32, 0, 64, 64, 17},
                                           RingCase{64, 128, 300, 256, 64},
                                           RingCase{128, 5, 200, 7, 130},
                                           RingCase{16, 16, 64, 64, 64}));

}  // namespace
}  // namespace lserve

namespace lserve {
namespace {

TEST(StreamingRingEdgeTest, NoPrefillOnceDecoding) {
  testing::KvDriver driver(RingConfig({16, 16, 64, 16, 64}), 9);
  driver.Prefill(1, 128, 64);
  driver.Append(1, 1, true);
  // Even a one-token prefill would read the shrunk ring with the prefill window.
  EXPECT_EQ(driver.tables().Extend(1, 1, false).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(driver.tables().Extend(1, 5, false).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(driver.tables().Extend(1, 1, true).ok());
}

// PagesNeeded must predict exactly what Extend takes from each pool, including the step
// that enters decode and shrinks the ring, over many random shapes.
TEST(StreamingRingEdgeTest, PagesNeededMatchesWhatExtendTakes) {
  std::mt19937 rng(17);
  for (int trial = 0; trial < 300; ++trial) {
    const int page = 2 << (rng() % 3);  // 2, 4, 8
    RingCase c{page, static_cast<int64_t>(rng() % 10), 0, 0, 0};
    c.decode_local = 1 + rng() % 12;
    c.prefill_local = c.decode_local + rng() % 20;
    c.max_chunk = 1 + rng() % 24;
    KvStoreConfig config = RingConfig(c);
    config.logical_page_size = page;
    config.num_dense_pages = 100000;
    config.num_streaming_pages = 100000;
    auto store = *KvStore::Create(config, HostMemory());
    KvPageTables* cache = &store->tables();
    ASSERT_TRUE(cache->AddSequence(0).ok());
    const int64_t prompt = 1 + rng() % 60;
    for (int64_t len = 0, step = 0; len < prompt + 30; ++step) {
      const bool decode = len >= prompt;
      const int64_t n = decode ? 1 : std::min<int64_t>(prompt - len, 1 + rng() % c.max_chunk);
      const auto needed = *cache->PagesNeeded(0, n, decode);
      const int64_t dense_before = cache->dense_allocator().num_used();
      const int64_t streaming_before = cache->streaming_allocator().num_used();
      ASSERT_TRUE(cache->Extend(0, n, decode).ok());
      ASSERT_TRUE(cache->Commit(0, n).ok());
      len += n;
      ASSERT_EQ(cache->dense_allocator().num_used() - dense_before, needed.dense)
          << "trial " << trial << " len " << len;
      // Entering decode may free more ring pages than it takes: PagesNeeded is the net
      // draw on the free list, never negative.
      const int64_t drawn = cache->streaming_allocator().num_used() - streaming_before;
      ASSERT_EQ(std::max<int64_t>(0, drawn), needed.streaming)
          << "trial " << trial << " len " << len;
    }
  }
}

TEST(StreamingRingEdgeTest, AllStreamingLayoutTakesNoDensePages) {
  KvStoreConfig config = RingConfig({16, 16, 64, 32, 64});
  config.layout = HeadLayout::FromStreamingMask({{true, true}, {true, true}});
  config.num_dense_pages = 0;
  testing::KvDriver driver(config, 5);
  driver.Prefill(1, 500, 64);
  driver.Prefill(2, 500, 64);
  EXPECT_EQ(driver.tables().dense_allocator().num_used(), 0);
  EXPECT_EQ(driver.tables().MaxPagesFor(500).dense, 0);
}

}  // namespace
}  // namespace lserve
