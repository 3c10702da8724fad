// The CUDA float32 ↔ bf16 conversions must match the host's bit-exact round-to-nearest-even
// (tests/kernels/cuda/cuda_test_util.h) on every input; NaN inputs need only give a NaN.
#include "kernels/cuda/convert.h"

#include <gtest/gtest.h>

#include <bit>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cuda/device_buffer.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace lserve::cuda {
namespace {

using testing::CudaDeviceTest;
using testing::FloatToBf16;
using testing::IsBf16NaN;

// Converts `in` starting `offset` elements into the device buffers (offset 0: vector path,
// odd offsets: scalar path) and checks every output, poisoned beforehand.
void CheckF32ToBf16(const std::vector<float>& in, int64_t offset) {
  SCOPED_TRACE(::testing::Message() << "n=" << in.size() << " offset=" << offset);
  std::vector<float> padded(offset, 0.0f);
  padded.insert(padded.end(), in.begin(), in.end());
  const int64_t n = static_cast<int64_t>(in.size());
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_in, Upload(padded));
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_out,
                              DeviceBuffer::Allocate((offset + n) * sizeof(uint16_t)));
  LSERVE_ASSERT_OK(d_out.Fill(0xFF));
  LSERVE_ASSERT_OK(F32ToBf16(d_in.as<float>() + offset, d_out.as<uint16_t>() + offset, n, nullptr));
  LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint16_t> out, Download<uint16_t>(d_out, offset + n));
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t got = out[offset + i];
    if (std::isnan(in[i])) {
      ASSERT_TRUE(IsBf16NaN(got)) << "element " << i;
    } else {
      ASSERT_EQ(got, FloatToBf16(in[i]))
          << "element " << i << " input bits 0x" << std::hex << std::bit_cast<uint32_t>(in[i]);
    }
  }
}

class ConvertCudaTest : public CudaDeviceTest {};

TEST_F(ConvertCudaTest, F32ToBf16SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> in = {0.0f,
                           -0.0f,
                           1.0f,
                           -1.0f,
                           inf,
                           -inf,
                           std::numeric_limits<float>::quiet_NaN(),
                           std::numeric_limits<float>::max(),
                           std::numeric_limits<float>::lowest(),
                           std::numeric_limits<float>::min(),
                           std::numeric_limits<float>::denorm_min()};
  // Ties (even and odd kept bit), just above and below a tie, largest rounding to finite,
  // subnormal ties.
  for (uint32_t bits : {0x3F808000u, 0x3F818000u, 0x3F808001u, 0x3F807FFFu, 0x7F7F7FFFu,
                        0x7F7F8000u, 0x00008000u, 0x00018000u, 0x807FFFFFu, 0xFF800001u}) {
    in.push_back(std::bit_cast<float>(bits));
  }
  CheckF32ToBf16(in, 0);
  CheckF32ToBf16(in, 1);
}

TEST_F(ConvertCudaTest, F32ToBf16RandomBitPatterns) {
  for (int64_t n : {1, 7, 8, 9, 1000003}) {
    std::mt19937 rng(static_cast<uint32_t>(n));
    std::vector<float> in(n);
    for (float& f : in) f = std::bit_cast<float>(static_cast<uint32_t>(rng()));
    CheckF32ToBf16(in, 0);
    CheckF32ToBf16(in, 3);
    if (HasFatalFailure()) return;
  }
}

// Widening is exact, so all 65536 patterns (NaN payloads included) must come back
// bit-for-bit as bits << 16.
TEST_F(ConvertCudaTest, Bf16ToF32EveryPattern) {
  std::vector<uint16_t> in(65536 + 1);
  for (uint32_t i = 0; i < in.size(); ++i) in[i] = static_cast<uint16_t>(i);
  for (int64_t offset : {0, 1}) {
    const int64_t n = static_cast<int64_t>(in.size()) - offset;
    LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_in, Upload(in));
    LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer d_out, DeviceBuffer::Allocate(in.size() * 4));
    LSERVE_ASSERT_OK(d_out.Fill(0xFF));
    LSERVE_ASSERT_OK(
        Bf16ToF32(d_in.as<uint16_t>() + offset, d_out.as<float>() + offset, n, nullptr));
    LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<float> out, Download<float>(d_out, in.size()));
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_EQ(std::bit_cast<uint32_t>(out[offset + i]), static_cast<uint32_t>(in[offset + i])
                                                              << 16)
          << "offset " << offset << " element " << i;
    }
  }
}

TEST(CudaConvertValidationTest, RejectsBadArguments) {
  float f[1] = {};
  uint16_t b[1] = {};
  EXPECT_EQ(F32ToBf16(f, b, -1, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(F32ToBf16(nullptr, b, 1, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Bf16ToF32(b, nullptr, 1, nullptr).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(F32ToBf16(nullptr, nullptr, 0, nullptr).ok());
  EXPECT_TRUE(Bf16ToF32(nullptr, nullptr, 0, nullptr).ok());
}

}  // namespace
}  // namespace lserve::cuda
