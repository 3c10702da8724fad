// Parity of the CUDA prefill attention with the CPU backend: a bf16 device store and a
// float32 host store hold the same bf16-rounded K/V (KvTwin), every prompt is prefilled in
// chunks and each chunk's rows attend on both sides. Tolerance per element:
//   |gpu - cpu| <= 2^-7 |cpu| + 2^-7,
// the relative part for the output's bf16 rounding and float32 summation order, the
// absolute part for P rounded to bf16 before P.V (as FlashAttention does): it moves the
// output by at most 2^-9 max|v|, and v ~ N(0, 1) here. Lengths 1 to 70,000 mixed in one
// batch, page sizes 16-128, head dims 64 and 128, GQA groups 1, 4 and 8, streaming
// ratios 0, 0.5 and 1 with windows shorter than the prompts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "tests/kernels/cuda/paged_kv_twin.h"

namespace lserve::cuda {
namespace {

using testing::CudaDeviceTest;
using testing::KvTwin;
using testing::TwinChunk;

struct PrefillCase {
  int page_size;
  int head_dim;
  int num_kv_heads;
  int group;
  double streaming_ratio;  // 0, 0.5 (every other KV head) or 1
  std::vector<int64_t> lengths;
  int64_t prefill_local = 1024;
  // Sequences at least this long attend only in their last chunk (the CPU oracle's time).
  int64_t attend_last_only_from = 1 << 30;
};

KvStoreConfig StoreConfig(const PrefillCase& c) {
  KvStoreConfig config =
      testing::TwinStoreConfig(c.num_kv_heads, c.head_dim, c.page_size, c.lengths);
  const int64_t n = static_cast<int64_t>(c.lengths.size());
  config.num_streaming_pages =
      n * (4 + 256 / c.page_size) + n * (c.prefill_local + 2048 + 2 * c.page_size) / c.page_size;
  std::vector<bool> streaming(c.num_kv_heads, c.streaming_ratio >= 1.0);
  if (c.streaming_ratio > 0.0 && c.streaming_ratio < 1.0) {
    for (int h = 1; h < c.num_kv_heads; h += 2) streaming[h] = true;
  }
  // With one kind of head only, a second (unused) layer of the other kind gives the
  // attended layer 0 a pool of that kind with pages but no rows of its own, as a model
  // whose layers differ in their streaming heads has.
  std::vector<bool> complement(c.num_kv_heads, c.streaming_ratio < 1.0);
  const bool one_kind = c.streaming_ratio <= 0.0 || c.streaming_ratio >= 1.0;
  config.layout = one_kind ? HeadLayout::FromStreamingMask({streaming, complement})
                           : HeadLayout::FromStreamingMask({streaming});
  config.num_layers = one_kind ? 2 : 1;
  config.prefill_local = c.prefill_local;
  return config;
}

void RunCase(PrefillCase c) {
  // LSERVE_DECODE_TEST_SMALL=1 (compute-sanitizer runs) caps the lengths.
  if (std::getenv("LSERVE_DECODE_TEST_SMALL") != nullptr) {
    for (int64_t& len : c.lengths) len = std::min<int64_t>(len, 1500);
  }
  const KvStoreConfig store = StoreConfig(c);
  SparseAttentionConfig attention = AttentionConfigFor(store);
  attention.page_selection = false;  // prefill rows never select pages
  auto twin = KvTwin::Create(store, attention, c.num_kv_heads * c.group, 9);
  ASSERT_NE(twin, nullptr);
  std::mt19937 rng(13);
  std::vector<int64_t> done(c.lengths.size(), 0);
  const int q_width = c.num_kv_heads * c.group * c.head_dim;
  int64_t compared = 0;
  for (int step = 0;; ++step) {
    std::vector<TwinChunk> chunks;
    bool attend = false;
    for (size_t s = 0; s < c.lengths.size(); ++s) {
      const int64_t left = c.lengths[s] - done[s];
      if (left <= 0) continue;
      const int64_t n =
          std::min<int64_t>(left, std::uniform_int_distribution<int64_t>(1, 2048)(rng));
      chunks.push_back({static_cast<SeqId>(s), n, false});
      attend = attend || c.lengths[s] < c.attend_last_only_from || n == left;
    }
    if (chunks.empty()) break;
    // Long sequences skip the attention of their early chunks only when nothing else in
    // the step needs it.
    std::vector<float> cpu, gpu;
    const absl::Status status = twin->Step(chunks, attend, &cpu, &gpu);
    ASSERT_TRUE(status.ok()) << status;
    for (const TwinChunk& chunk : chunks) done[chunk.seq] += chunk.n;
    if (!attend) continue;
    int bad = 0;
    for (size_t i = 0; i < cpu.size() && bad < 10; ++i) {
      const double tol = testing::kBf16RelTol * std::fabs(cpu[i]) + 1.0 / 128.0;
      if (!(std::fabs(gpu[i] - cpu[i]) <= tol)) {
        ++bad;
        ADD_FAILURE() << "step " << step << " row " << i / q_width << " head "
                      << (i % q_width) / c.head_dim << " channel " << i % c.head_dim << ": gpu "
                      << gpu[i] << " cpu " << cpu[i];
      }
    }
    compared += static_cast<int64_t>(cpu.size());
  }
  EXPECT_GT(compared, 0);
}

class PagedPrefillTest : public CudaDeviceTest {};

TEST_F(PagedPrefillTest, MixedLengthsChunkedEveryPageSize) {
  for (int page_size : {16, 32, 64, 128}) {
    SCOPED_TRACE(page_size);
    RunCase({page_size, 128, 2, 4, 0.5, {1, 17, 128, 1000, 4097}});
  }
}

TEST_F(PagedPrefillTest, GqaGroupsStreamingRatiosAndHeadDims) {
  for (int head_dim : {64, 128}) {
    for (int group : {1, 4, 8}) {
      for (double ratio : {0.0, 0.5, 1.0}) {
        SCOPED_TRACE(::testing::Message()
                     << "d " << head_dim << " group " << group << " ratio " << ratio);
        RunCase({64, head_dim, 2, group, ratio, {17, 1000, 3001}});
      }
    }
  }
}

TEST_F(PagedPrefillTest, SeventyThousandTokensWithShortOnes) {
  RunCase({64, 128, 2, 4, 0.5, {70000, 129, 5}, 8192, 10000});
}

}  // namespace
}  // namespace lserve::cuda
