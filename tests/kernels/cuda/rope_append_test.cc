// The fused RoPE + KV append (one launch: q rotated in place, k rotated on its way into the
// pools, page statistics updated) against the same work as three launches (RoPE of q, RoPE
// of k, append): the device pools, statistics included, and the rotated queries must be
// bitwise equal after every step of prefill chunks followed by decode steps, over page
// sizes 16-128, head dims 64 and 128, GQA groups 1-8, dense and streaming heads, positions
// past 2048 (one case under LSERVE_DECODE_TEST_SMALL). The three-launch path is itself checked
// against the CPU (cuda_rope_test, cuda_paged_decode_test).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "kernels/rope_frequencies.h"
#include "tests/kernels/cuda/paged_kv_twin.h"

namespace lserve::cuda {
namespace {

using testing::CudaDeviceTest;
using testing::KvTwin;
using testing::TwinChunk;

struct RopeAppendCase {
  int page_size;
  int head_dim;
  int group;
};

void RunCase(const RopeAppendCase& c) {
  SCOPED_TRACE(::testing::Message()
               << "page " << c.page_size << " head_dim " << c.head_dim << " group " << c.group);
  const std::vector<int64_t> lengths = {1, 17, 300, 2600};
  KvStoreConfig config = testing::TwinStoreConfig(2, c.head_dim, c.page_size, lengths);
  const int64_t num_seqs = static_cast<int64_t>(lengths.size());
  config.num_streaming_pages =
      num_seqs * (2 + 512 / c.page_size + 4) + num_seqs * (8192 + 2048) / c.page_size;
  config.prefill_local = 8192;
  config.layout = HeadLayout::FromStreamingMask({{false, true}});
  const SparseAttentionConfig attention = AttentionConfigFor(config);
  const int num_q_heads = 2 * c.group;
  std::unique_ptr<KvTwin> separate = KvTwin::Create(config, attention, num_q_heads, 11);
  std::unique_ptr<KvTwin> fused = KvTwin::Create(config, attention, num_q_heads, 11);
  ASSERT_NE(separate, nullptr);
  ASSERT_NE(fused, nullptr);
  RopeSpec spec;
  spec.head_dim = c.head_dim;
  spec.theta = 500000.0f;
  const std::vector<float> inv_freq = RopeInverseFrequencies(spec);
  MemorySpace* memory = fused->gpu().backend->memory();
  LSERVE_ASSERT_OK_AND_ASSIGN(Buffer inv_freq_device,
                              Buffer::Allocate(memory, inv_freq.size() * sizeof(float)));
  LSERVE_ASSERT_OK(memory->CopyFromHost(inv_freq_device.data(), inv_freq.data(),
                                        inv_freq.size() * sizeof(float)));
  separate->set_gpu_rope(KvTwin::GpuRope::kSeparate, inv_freq_device.as<float>());
  fused->set_gpu_rope(KvTwin::GpuRope::kFused, inv_freq_device.as<float>());

  // Prefill in chunks of up to 1000 rows, every sequence in each step, then decode steps.
  std::vector<int64_t> done(lengths.size(), 0);
  for (int step = 0; step < 8; ++step) {
    std::vector<TwinChunk> chunks;
    int64_t rows = 0;
    for (size_t s = 0; s < lengths.size(); ++s) {
      const bool decode = done[s] >= lengths[s];
      const int64_t n = decode ? 1 : std::min<int64_t>(1000, lengths[s] - done[s]);
      chunks.push_back({static_cast<SeqId>(s), n, decode, decode ? step : 0});
      done[s] += n;
      rows += n;
    }
    SCOPED_TRACE(::testing::Message() << "step " << step << ", " << rows << " rows");
    LSERVE_ASSERT_OK(separate->Step(chunks, false, nullptr, nullptr));
    LSERVE_ASSERT_OK(fused->Step(chunks, false, nullptr, nullptr));
    for (bool streaming : {false, true}) {
      LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<float> pool_separate,
                                  separate->GpuPool(0, streaming));
      LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<float> pool_fused, fused->GpuPool(0, streaming));
      ASSERT_EQ(pool_separate.size(), pool_fused.size());
      size_t differing = 0;
      for (size_t i = 0; i < pool_fused.size(); ++i) {
        differing += pool_separate[i] != pool_fused[i] ? 1 : 0;
      }
      EXPECT_EQ(differing, 0u) << "of " << pool_fused.size()
                               << (streaming ? " streaming" : " dense") << " pool values";
    }
    LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> q_separate, separate->GpuRotatedQueries());
    LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> q_fused, fused->GpuRotatedQueries());
    EXPECT_EQ(q_separate.size(), static_cast<size_t>(rows) * num_q_heads * c.head_dim);
    EXPECT_EQ(q_separate, q_fused);
    // RoPE really moved the queries (a path that rotated nothing would pass the checks
    // above); rows at position 0 keep theirs.
    size_t moved = 0;
    for (size_t i = 0; i < q_fused.size(); ++i) {
      moved += testing::Bf16ToFloat(q_fused[i]) != fused->queries()[i] ? 1 : 0;
    }
    EXPECT_GT(moved, q_fused.size() / 4) << "the queries came out unrotated";
  }
}

class RopeAppendTest : public CudaDeviceTest {};

TEST_F(RopeAppendTest, FusedEqualsThreeLaunchesBitwise) {
  std::vector<RopeAppendCase> cases = {{16, 128, 4}, {64, 64, 1}, {128, 128, 8}, {32, 64, 3}};
  // Under compute-sanitizer: one case.
  if (std::getenv("LSERVE_DECODE_TEST_SMALL") != nullptr) cases.resize(1);
  for (const RopeAppendCase& c : cases) RunCase(c);
}

}  // namespace
}  // namespace lserve::cuda
