// Parity of the CUDA ApplyRope kernel with a double reference on the same bf16-rounded
// inputs. The reference forms each angle as the float32 product float(pos)·inv_freq[i], as
// the kernel and transformers do (at position 131072 a double product would differ by up
// to 8e-3 rad, more than the bf16 tolerance), then takes cos and sin in double.
// Tolerance: |out − ref| <= 2⁻⁷·|ref| + 1e-5 (see Bf16Near).
#include "kernels/cuda/rope.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "kernels/cpu/rope.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/device_buffer.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace lserve::cuda {
namespace {

using testing::Bf16Near;
using testing::Bf16ToFloat;
using testing::CudaDeviceTest;
using testing::RandomBf16;

constexpr double kAbsTol = 1e-5;
constexpr int32_t kMaxPosition = 131072;

// Llama 3.1's rope_scaling for head_dim 128; plain theta 1e4 otherwise.
std::vector<float> InverseFrequencies(int head_dim) {
  if (head_dim == 128) {
    return cpu::RopeInverseFrequencies({.head_dim = 128,
                                        .theta = 500000.0f,
                                        .kind = cpu::RopeKind::kLlama3,
                                        .factor = 8.0f,
                                        .low_freq_factor = 1.0f,
                                        .high_freq_factor = 4.0f,
                                        .original_max_position_embeddings = 8192});
  }
  return cpu::RopeInverseFrequencies({.head_dim = head_dim, .theta = 10000.0f});
}

// Positions 0 and kMaxPosition first and last, random ones between.
std::vector<int32_t> Positions(int64_t num_tokens, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, kMaxPosition);
  std::vector<int32_t> positions(num_tokens);
  for (int32_t& p : positions) p = dist(rng);
  positions.front() = 0;
  if (num_tokens > 1) positions.back() = kMaxPosition;
  return positions;
}

struct RopeCase {
  int64_t num_tokens;
  int num_heads;
  int head_dim;
  int64_t token_stride;  // elements between tokens, >= num_heads·head_dim
  int64_t x_offset;      // elements into the buffer where token 0's head 0 starts
};

void CheckRope(const RopeCase& c, uint32_t seed) {
  SCOPED_TRACE(::testing::Message()
               << "tokens=" << c.num_tokens << " heads=" << c.num_heads << " head_dim="
               << c.head_dim << " token_stride=" << c.token_stride << " x_offset=" << c.x_offset);
  const int64_t size = c.x_offset + c.num_tokens * c.token_stride;
  const std::vector<uint16_t> x = RandomBf16(size, seed, -2.0f, 2.0f);
  const std::vector<int32_t> positions = Positions(c.num_tokens, seed + 1);
  const std::vector<float> inv_freq = InverseFrequencies(c.head_dim);

  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_x, Upload(x));
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_pos, Upload(positions));
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_freq, Upload(inv_freq));
  LSERVE_ASSERT_OK(ApplyRope({.x = d_x.as<uint16_t>() + c.x_offset,
                              .positions = d_pos.as<int32_t>(),
                              .inv_freq = d_freq.as<float>(),
                              .num_tokens = c.num_tokens,
                              .num_heads = c.num_heads,
                              .head_dim = c.head_dim,
                              .token_stride = c.token_stride,
                              .dtype = DType::kBF16},
                             nullptr));
  LSERVE_ASSERT_OK(SynchronizeStream(nullptr));
  LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> out, Download<uint16_t>(d_x, size));

  // The CPU backend's RoPE on the same bf16-rounded inputs is the reference.
  std::vector<float> ref(size);
  for (int64_t i = 0; i < size; ++i) ref[i] = Bf16ToFloat(x[i]);
  LSERVE_ASSERT_OK(cpu::ApplyRope({.x = ref.data() + c.x_offset,
                                   .positions = positions.data(),
                                   .inv_freq = inv_freq.data(),
                                   .num_tokens = c.num_tokens,
                                   .num_heads = c.num_heads,
                                   .head_dim = c.head_dim,
                                   .token_stride = c.token_stride}));
  // Everything outside the rotated heads must be bit-for-bit unchanged.
  std::vector<bool> rotated(size, false);
  int failures = 0;
  for (int64_t t = 0; t < c.num_tokens && failures < 10; ++t) {
    for (int h = 0; h < c.num_heads; ++h) {
      const int64_t base = c.x_offset + t * c.token_stride + static_cast<int64_t>(h) * c.head_dim;
      for (int i = 0; i < c.head_dim; ++i) {
        const auto ok = Bf16Near(out[base + i], ref[base + i], kAbsTol);
        EXPECT_TRUE(ok) << "token " << t << " head " << h << " i " << i;
        failures += !ok;
        rotated[base + i] = true;
      }
    }
  }
  for (int64_t i = 0; i < size && failures == 0; ++i) {
    if (!rotated[i]) {
      ASSERT_EQ(out[i], x[i]) << "element " << i << " outside the heads changed";
    }
  }
}

class RopeCudaTest : public CudaDeviceTest {};

TEST_F(RopeCudaTest, MatchesReferenceOverOddShapes) {
  for (int64_t tokens : {1, 3, 17, 129}) {
    for (int heads : {1, 8, 32}) {
      for (int head_dim : {64, 128}) {
        CheckRope({.num_tokens = tokens,
                   .num_heads = heads,
                   .head_dim = head_dim,
                   .token_stride = static_cast<int64_t>(heads) * head_dim,
                   .x_offset = 0},
                  static_cast<uint32_t>(tokens * 1009 + heads * 31 + head_dim));
        if (HasFatalFailure()) return;
      }
    }
  }
}

// k inside a fused [tokens][(32 + 8 + 8)·128] qkv row: q and v must stay untouched.
TEST_F(RopeCudaTest, KeysInsideFusedQkvRows) {
  CheckRope({.num_tokens = 17,
             .num_heads = 8,
             .head_dim = 128,
             .token_stride = 48 * 128,
             .x_offset = 32 * 128},
            7);
}

TEST_F(RopeCudaTest, ScalarPathForUnalignedLayouts) {
  // head_dim/2 = 36 is not a multiple of 8.
  CheckRope(
      {.num_tokens = 17, .num_heads = 8, .head_dim = 72, .token_stride = 8 * 72, .x_offset = 0}, 8);
  // Aligned head_dim but an odd token stride and start.
  CheckRope({.num_tokens = 17,
             .num_heads = 8,
             .head_dim = 128,
             .token_stride = 8 * 128 + 3,
             .x_offset = 5},
            9);
}

TEST_F(RopeCudaTest, PositionZeroIsIdentity) {
  const int64_t tokens = 3;
  const int heads = 8;
  const int head_dim = 128;
  const std::vector<uint16_t> x = RandomBf16(tokens * heads * head_dim, 10, -2.0f, 2.0f);
  const std::vector<int32_t> positions(tokens, 0);
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_x, Upload(x));
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_pos, Upload(positions));
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_freq, Upload(InverseFrequencies(head_dim)));
  LSERVE_ASSERT_OK(ApplyRope({.x = d_x.as<uint16_t>(),
                              .positions = d_pos.as<int32_t>(),
                              .inv_freq = d_freq.as<float>(),
                              .num_tokens = tokens,
                              .num_heads = heads,
                              .head_dim = head_dim,
                              .dtype = DType::kBF16},
                             nullptr));
  LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> out, Download<uint16_t>(d_x, x.size()));
  EXPECT_EQ(out, x);
}

// Argument checks happen before any CUDA call, so this runs without a GPU.
TEST(CudaRopeValidationTest, RejectsBadArguments) {
  uint16_t x[8] = {};
  int32_t pos[1] = {};
  float freq[4] = {};
  const RopeParams good{.x = x,
                        .positions = pos,
                        .inv_freq = freq,
                        .num_tokens = 1,
                        .num_heads = 1,
                        .head_dim = 8,
                        .dtype = DType::kBF16};
  RopeParams p = good;
  p.head_dim = 7;
  EXPECT_EQ(ApplyRope(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.head_dim = kMaxRopeHeadDim + 2;
  EXPECT_EQ(ApplyRope(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p = good;
  p.num_heads = 0;
  EXPECT_EQ(ApplyRope(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p = good;
  p.token_stride = 4;
  EXPECT_EQ(ApplyRope(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p = good;
  p.inv_freq = nullptr;
  EXPECT_EQ(ApplyRope(p, nullptr).code(), absl::StatusCode::kInvalidArgument);
  p.num_tokens = 0;
  EXPECT_TRUE(ApplyRope(p, nullptr).ok());
}

}  // namespace
}  // namespace lserve::cuda
