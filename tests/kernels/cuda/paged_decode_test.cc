// Parity of the CUDA decode path with the CPU backend over mixed-length batches: a bf16
// device store and a float32 host store hold the same bf16-rounded values (KvTwin), so
//  * the appended K/V rows and the page statistics must be bitwise equal, and equal to a
//    recomputation over the keys written (after mixed prefill chunks and decode appends);
//  * page scores must be bitwise equal, and so the selected pages (CPU top-k vs GPU top-k);
//  * decode attention must agree within |gpu - cpu| <= 2^-7 |cpu| + 1e-4 (the output's
//    bf16 rounding is at most 2^-9 |cpu|; the rest covers float32 summation order).
// Page sizes 16-128, head dims 64 and 128, GQA groups 1, 3, 4 and 8, dense and streaming
// heads, selection per query head and per KV head, lengths 1 to 70,000.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "kernels/cuda/device.h"
#include "kernels/cuda/paged_attention.h"
#include "tests/kernels/cuda/paged_kv_twin.h"

namespace lserve::cuda {
namespace {

using testing::CudaDeviceTest;
using testing::KvTwin;
using testing::TwinChunk;

struct DecodeCase {
  int page_size;
  int head_dim;
  int num_kv_heads;
  int group;
  std::vector<int64_t> lengths;
  bool selection;
  PageScoring scoring = PageScoring::kPerQueryHead;
};

KvStoreConfig StoreConfig(const DecodeCase& c) {
  KvStoreConfig config =
      testing::TwinStoreConfig(c.num_kv_heads, c.head_dim, c.page_size, c.lengths);
  config.num_streaming_pages =
      static_cast<int64_t>(c.lengths.size()) * (2 + 512 / c.page_size + 4) +
      static_cast<int64_t>(c.lengths.size()) * (8192 + 2048) / c.page_size;
  // Every other KV head streams (the first stays dense).
  std::vector<bool> streaming(c.num_kv_heads, false);
  for (int h = 1; h < c.num_kv_heads; h += 2) streaming[h] = true;
  config.layout = HeadLayout::FromStreamingMask({streaming});
  config.prefill_local = 8192;
  return config;
}

SparseAttentionConfig AttentionConfig(const DecodeCase& c, const KvStoreConfig& store) {
  SparseAttentionConfig config = AttentionConfigFor(store);
  config.page_selection = c.selection;
  config.token_budget = 1024;
  config.reuse_interval = 4;
  config.scoring = c.scoring;
  return config;
}

// Prefills every sequence in chunks of up to 2048 (the last one of 1 to 2048 tokens),
// then decodes a few steps, comparing attention at every decode step.
void RunCase(DecodeCase c) {
  // LSERVE_DECODE_TEST_SMALL=1 (compute-sanitizer runs) caps the lengths.
  if (std::getenv("LSERVE_DECODE_TEST_SMALL") != nullptr) {
    for (int64_t& len : c.lengths) len = std::min<int64_t>(len, 3000);
  }
  const KvStoreConfig store = StoreConfig(c);
  auto twin = KvTwin::Create(store, AttentionConfig(c, store), c.num_kv_heads * c.group, 7);
  ASSERT_NE(twin, nullptr);
  std::mt19937 rng(11);
  std::vector<int64_t> done(c.lengths.size(), 0);
  for (bool more = true; more;) {
    more = false;
    std::vector<TwinChunk> chunks;
    for (size_t s = 0; s < c.lengths.size(); ++s) {
      const int64_t left = c.lengths[s] - 1 - done[s];  // the last token is decoded
      if (left <= 0) continue;
      const int64_t n =
          std::min<int64_t>(left, std::uniform_int_distribution<int64_t>(1, 2048)(rng));
      chunks.push_back({static_cast<SeqId>(s), n, false});
      done[s] += n;
      more = true;
    }
    if (more) {
      ASSERT_TRUE(twin->Step(chunks, false, nullptr, nullptr).ok());
    }
  }
  const int q_width = c.num_kv_heads * c.group * c.head_dim;
  for (int step = 0; step < 6; ++step) {
    std::vector<TwinChunk> chunks;
    for (size_t s = 0; s < c.lengths.size(); ++s)
      chunks.push_back({static_cast<SeqId>(s), 1, true, step});
    std::vector<float> cpu, gpu;
    const absl::Status status = twin->Step(chunks, true, &cpu, &gpu);
    ASSERT_TRUE(status.ok()) << status;
    int bad = 0;
    for (size_t i = 0; i < cpu.size() && bad < 10; ++i) {
      const double tol = testing::kBf16RelTol * std::fabs(cpu[i]) + 1e-4;
      if (!(std::fabs(gpu[i] - cpu[i]) <= tol)) {
        ++bad;
        ADD_FAILURE() << "step " << step << " seq " << i / q_width << " head "
                      << (i % q_width) / c.head_dim << " channel " << i % c.head_dim << ": gpu "
                      << gpu[i] << " cpu " << cpu[i];
      }
    }
  }
  // K/V rows and statistics: the device pool equals the host pool, and the statistics
  // equal a recomputation over the keys written.
  auto gpu_pool = twin->GpuDensePool(0);
  ASSERT_TRUE(gpu_pool.ok()) << gpu_pool.status();
  const KvPool& host_pool = twin->cpu().store->dense_pool();
  const float* host = static_cast<const float*>(host_pool.LayerBase(0));
  const int64_t stride = host_pool.PageStride(0);
  const int d = c.head_dim;
  const LayerHeadLayout& heads = store.layout.layers[0];
  int64_t compared = 0;
  for (size_t s = 0; s < c.lengths.size(); ++s) {
    const auto pages = twin->cpu().store->tables().DensePages(static_cast<SeqId>(s));
    const int64_t len = *twin->cpu().store->tables().Length(static_cast<SeqId>(s));
    for (int h = 0; h < c.num_kv_heads; ++h) {
      if (heads.streaming[h]) continue;
      const int slot = heads.slot[h];
      const std::vector<float>& keys = twin->Keys(static_cast<SeqId>(s), h);
      for (int64_t lp = 0; lp * 16 < len; ++lp) {
        const int64_t page = pages[lp * 16 / c.page_size];
        const int64_t j = (lp * 16 % c.page_size) / 16;
        const int64_t offset = page * stride + host_pool.KeyMaxOffset(0, slot) + j * d;
        const int64_t min_offset = page * stride + host_pool.KeyMinOffset(0, slot) + j * d;
        for (int ch = 0; ch < d; ++ch) {
          float high = keys[lp * 16 * d + ch], low = high;
          for (int64_t pos = lp * 16 + 1; pos < std::min(len, lp * 16 + 16); ++pos) {
            high = std::max(high, keys[pos * d + ch]);
            low = std::min(low, keys[pos * d + ch]);
          }
          ASSERT_EQ((*gpu_pool)[offset + ch], high) << "seq " << s << " logical page " << lp;
          ASSERT_EQ((*gpu_pool)[min_offset + ch], low) << "seq " << s << " logical page " << lp;
          ASSERT_EQ(host[offset + ch], high);
          ++compared;
        }
        const int64_t row = lp * 16 % c.page_size;
        const int64_t k_offset = page * stride + host_pool.KeyOffset(slot) + row * d;
        for (int ch = 0; ch < 16 * d && lp * 16 + ch / d < len; ++ch) {
          ASSERT_EQ((*gpu_pool)[k_offset + ch], host[k_offset + ch]);
        }
      }
    }
  }
  EXPECT_GT(compared, 0);
}

class PagedDecodeTest : public CudaDeviceTest {};

TEST_F(PagedDecodeTest, DenseAndStreamingHeadsEveryPageSize) {
  for (int page_size : {16, 32, 64, 128}) {
    SCOPED_TRACE(page_size);
    RunCase({page_size, 128, 2, 4, {1, 17, page_size, page_size + 1, 1000, 4097}, false});
  }
}

TEST_F(PagedDecodeTest, HeadDim64AndOddGroups) {
  RunCase({32, 64, 4, 3, {2, 65, 333, 2500, 9001}, false});
  RunCase({64, 64, 2, 1, {5, 300, 12345}, false});
  RunCase({16, 128, 2, 8, {70, 3000}, false});
}

TEST_F(PagedDecodeTest, SelectedPagesPerQueryHeadAndPerKvHead) {
  for (PageScoring scoring : {PageScoring::kPerQueryHead, PageScoring::kPerKvHead}) {
    for (int page_size : {16, 64, 128}) {
      SCOPED_TRACE(page_size);
      RunCase({page_size, 128, 2, 4, {3, 900, 1500, 5000, 20000}, true, scoring});
    }
  }
}

// Llama-3-8B's heads with half the KV heads streaming, one sequence at the selection
// budget: the 16 dense query heads' long ranges size the split count, so their CTAs alone
// cover every SM; counted as 32 long ranges, half the SMs would idle after the streaming
// heads' short CTAs. Those get fewer splits when their length is known.
TEST_F(PagedDecodeTest, SplitPlanIsSizedByTheDenseHeads) {
  const int32_t slot = 0;  // the plan reads no selection, only whether one is set
  PagedAttentionParams p;
  p.kv.head_dim = 128;
  p.kv.page_size = 64;
  p.kv.num_kv_heads = 8;
  p.num_q_heads = 32;
  p.tables.num_seqs = 1;
  p.tables.max_kv_len = 131072;
  p.max_keys = 4096 + 64;
  p.selection_slot = &slot;
  const int every_head_long = PlanDecode(p, 132).splits;
  p.kv.dense.num_heads = 4;
  p.kv.streaming.num_heads = 4;
  const int dense_heads_long = PlanDecode(p, 132).splits;
  EXPECT_GT(dense_heads_long, every_head_long);
  EXPECT_GE(16 * dense_heads_long, 132);
  EXPECT_LE(int64_t{dense_heads_long} * kDecodeMinSplitKeys, p.max_keys);
  // Scored per KV head, the group shares its loads: four long ranges.
  p.selection_per_kv_head = true;
  EXPECT_GE(PlanDecode(p, 132).splits, dense_heads_long);
  // With the streaming heads' 384 keys known, they take about a dense split's length each.
  p.selection_per_kv_head = false;
  p.max_streaming_keys = 384;
  const DecodeLaunch apart = PlanDecode(p, 132);
  const int64_t dense_chunk = (p.max_keys + apart.splits - 1) / apart.splits;
  EXPECT_GE(apart.streaming_splits, 1);
  EXPECT_LT(apart.streaming_splits, apart.splits);
  EXPECT_EQ(apart.streaming_splits, (384 + dense_chunk - 1) / dense_chunk);
  // An empty batch (no keys at all) plans one split.
  p.max_keys = 0;
  p.tables.max_kv_len = 0;
  p.tables.num_seqs = 0;
  EXPECT_EQ(PlanDecode(p, 132).splits, 1);
}

TEST_F(PagedDecodeTest, SeventyThousandTokensMixedWithShortOnes) {
  RunCase({64, 128, 2, 4, {1, 70000, 129, 33333}, true});
  RunCase({32, 128, 2, 4, {70000, 7}, false});
}

}  // namespace
}  // namespace lserve::cuda
