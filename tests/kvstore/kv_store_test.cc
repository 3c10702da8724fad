// The KV store's page tables, pools, CSR export and sequence export/import.
#include "kvstore/kv_store.h"

#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kvstore/kv_test_util.h"

namespace lserve {
namespace {

KvStoreConfig SmallConfig() {
  KvStoreConfig config;
  config.num_layers = 2;
  config.num_kv_heads = 2;
  config.head_dim = 4;
  config.page_size = 8;
  config.logical_page_size = 4;
  config.num_dense_pages = 16;
  return config;
}

KvStoreConfig HybridConfig() {
  KvStoreConfig config = SmallConfig();
  config.num_kv_heads = 3;
  config.layout = HeadLayout::FromStreamingMask({{false, true, false}, {true, true, false}});
  config.num_dense_pages = 64;
  config.num_streaming_pages = 64;
  config.sink = 5;
  config.prefill_local = 20;
  config.decode_local = 9;
  config.max_chunk_tokens = 16;
  return config;
}

TEST(KvStoreTest, DensePagesReadBackWhatWasWritten) {
  testing::KvDriver driver(SmallConfig(), 1);
  // Two chunks: 13 tokens, then 8.
  driver.Append(3, 13, false);
  driver.Append(3, 8, false);
  testing::HostTables tables(driver.store(), {3});
  ASSERT_EQ(tables.arrays.dense_indptr, (std::vector<int32_t>{0, 3}));
  EXPECT_EQ(tables.arrays.dense_last_page_len[0], 5);
  std::vector<cpu::KvSpan> spans;
  cpu::AddPageSpans(tables.arrays.dense_indices.data(), nullptr, 3, 21, 8, &spans);
  ASSERT_EQ(spans.size(), 3u);
  EXPECT_EQ(spans[2].num_rows, 5);
  const KvPool& pool = driver.store().dense_pool();
  for (const auto& span : spans) {
    for (int r = 0; r < span.num_rows; ++r) {
      const int64_t pos = span.first_pos + r;
      for (int h = 0; h < 2; ++h) {
        const float* stored = static_cast<const float*>(pool.LayerBase(1)) +
                              span.page * pool.PageStride(1) + pool.KeyOffset(h) +
                              (span.row_begin + r) * 4;
        for (int c = 0; c < 4; ++c) EXPECT_EQ(stored[c], driver.Key(3, 1, pos, h)[c]);
      }
    }
  }
  EXPECT_EQ(driver.tables().dense_allocator().num_used(), 3);
  ASSERT_TRUE(driver.store().FreeSequence(3).ok());
  EXPECT_EQ(driver.tables().dense_allocator().num_used(), 0);
}

TEST(KvStoreTest, ExtendIsAllOrNothing) {
  KvStoreConfig config = SmallConfig();
  config.num_dense_pages = 3;
  auto store = *KvStore::Create(config, HostMemory());
  ASSERT_TRUE(store->AddSequence(1).ok());
  EXPECT_EQ(store->tables().Extend(1, 25, false).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(store->tables().dense_allocator().num_used(), 0);
  EXPECT_TRUE(store->tables().Extend(1, 24, false).ok());
}

TEST(KvStoreTest, RejectsBadConfigsAndUnknownSequences) {
  KvStoreConfig config = SmallConfig();
  config.logical_page_size = 3;
  EXPECT_EQ(KvStore::Create(config, HostMemory()).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto store = *KvStore::Create(SmallConfig(), HostMemory());
  EXPECT_EQ(store->tables().Extend(9, 1, false).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->FreeSequence(9).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store->AddSequence(9).ok());
  EXPECT_EQ(store->AddSequence(9).code(), absl::StatusCode::kAlreadyExists);
}

// One page of one layer is one contiguous run: K, V, then kmax/kmin of every head.
TEST(KvStoreTest, PoolPageOfALayerIsOneContiguousRun) {
  auto store = *KvStore::Create(HybridConfig(), HostMemory());
  const KvPool& dense = store->dense_pool();
  // Layer 0 has 2 dense heads, layer 1 one; P=8, D=4, 2 logical pages per page.
  EXPECT_EQ(dense.PageStride(0), 2 * (2 * 8 * 4 + 2 * 2 * 4));
  EXPECT_EQ(dense.PageStride(1), 1 * (2 * 8 * 4 + 2 * 2 * 4));
  EXPECT_EQ(dense.ValueOffset(0, 1), (2 + 1) * 8 * 4);
  EXPECT_EQ(dense.KeyMaxOffset(0, 1), 2 * 2 * 8 * 4 + 1 * 2 * 4);
  EXPECT_EQ(dense.KeyMinOffset(0, 1), 2 * 2 * 8 * 4 + (2 + 1) * 2 * 4);
  EXPECT_EQ(dense.PageBytesAllLayers(), (dense.PageStride(0) + dense.PageStride(1)) * 4);
  const KvPool& streaming = store->streaming_pool();
  EXPECT_EQ(streaming.PageStride(0), 1 * 2 * 8 * 4);
  EXPECT_EQ(streaming.PageStride(1), 2 * 2 * 8 * 4);
  EXPECT_EQ(static_cast<const uint8_t*>(dense.LayerBase(1)) -
                static_cast<const uint8_t*>(dense.LayerBase(0)),
            dense.PageStride(0) * 4 * 64);
}

TEST(KvStoreTest, ExportsCsrPageTablesForABatch) {
  testing::KvDriver driver(HybridConfig(), 2);
  driver.Prefill(1, 40, 16);
  driver.Append(2, 3, false);
  for (int i = 0; i < 6; ++i) driver.Append(1, 1, true);
  testing::HostTables tables(driver.store(), {2, 1});
  const PageTableArrays& a = tables.arrays;
  EXPECT_EQ(a.kv_len, (std::vector<int32_t>{3, 46}));
  EXPECT_EQ(a.dense_indptr, (std::vector<int32_t>{0, 1, 1 + 6}));
  EXPECT_EQ(a.dense_last_page_len, (std::vector<int32_t>{3, 6}));
  EXPECT_EQ(a.ring_start, 8);  // one sink page of 8 tokens holds the 5-token sink
  EXPECT_EQ(a.stream_sink_pages, (std::vector<int32_t>{1, 1}));
  // Sequence 2 has no ring yet; sequence 1 decodes with ceil(9/8) + 1 = 3 slots.
  EXPECT_EQ(a.stream_indptr, (std::vector<int32_t>{0, 1, 1 + 1 + 3}));
  const auto& ring = driver.tables().Ring(1).slots();
  EXPECT_EQ(std::vector<int32_t>(a.stream_indices.begin() + 2, a.stream_indices.end()),
            std::vector<int32_t>(ring.begin(), ring.end()));
}

// A snapshot carries a sequence into another store, where it reads back identically
// (K, V, statistics and the ring, slot for slot), and keeps decoding there.
TEST(KvStoreTest, ExportedSequenceImportsIntoAnotherStoreIntact) {
  testing::KvDriver source(HybridConfig(), 3);
  source.Prefill(7, 61, 16);
  for (int i = 0; i < 11; ++i) source.Append(7, 1, true);
  absl::StatusOr<KvSnapshot> snapshot = source.store().ExportSequence(7);
  ASSERT_TRUE(snapshot.ok()) << snapshot.status();
  EXPECT_EQ(snapshot->length, 72);
  EXPECT_TRUE(snapshot->decoding);
  testing::KvDriver target(HybridConfig(), 4);
  target.Prefill(1, 30, 16);  // so page ids differ between the stores
  ASSERT_TRUE(target.store().ImportSequence(9, *snapshot).ok());
  absl::StatusOr<KvSnapshot> again = target.store().ExportSequence(9);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->dense_bytes, snapshot->dense_bytes);
  EXPECT_EQ(again->streaming_bytes, snapshot->streaming_bytes);
  EXPECT_EQ(again->streaming_indices, snapshot->streaming_indices);
  EXPECT_NE(target.tables().DensePages(9), source.tables().DensePages(7));
  EXPECT_TRUE(target.tables().Extend(9, 1, true).ok());
  EXPECT_TRUE(target.store().CheckConsistency().ok());
  // Shapes must match, and a store without room refuses the whole sequence.
  KvStoreConfig other = HybridConfig();
  other.decode_local = 8;
  auto mismatched = *KvStore::Create(other, HostMemory());
  EXPECT_EQ(mismatched->ImportSequence(1, *snapshot).code(), absl::StatusCode::kInvalidArgument);
  KvStoreConfig small = HybridConfig();
  small.num_dense_pages = 4;
  auto full = *KvStore::Create(small, HostMemory());
  EXPECT_EQ(full->ImportSequence(1, *snapshot).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(full->tables().dense_allocator().num_used(), 0);
  EXPECT_EQ(full->tables().streaming_allocator().num_used(), 0);
  KvSnapshot corrupt = *snapshot;
  corrupt.dense_bytes.pop_back();
  EXPECT_EQ(target.store().ImportSequence(2, corrupt).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lserve
