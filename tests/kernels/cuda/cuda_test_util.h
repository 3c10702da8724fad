// Host-side helpers for the CUDA parity tests: bf16 bit conversions, random inputs, the
// skip rule for machines without a GPU and the bf16 tolerance check.
#ifndef LSERVE_TESTS_KERNELS_CUDA_CUDA_TEST_UTIL_H_
#define LSERVE_TESTS_KERNELS_CUDA_CUDA_TEST_UTIL_H_

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/status_macros.h"
#include "kernels/backend_registry.h"

#define LSERVE_ASSERT_OK(expr)                \
  do {                                        \
    const absl::Status lserve_s_ = (expr);    \
    ASSERT_TRUE(lserve_s_.ok()) << lserve_s_; \
  } while (0)

#define LSERVE_ASSERT_OK_AND_ASSIGN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                                      \
  ASSERT_TRUE(tmp.ok()) << tmp.status();                   \
  lhs = std::move(tmp).value()

#define LSERVE_ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  LSERVE_ASSERT_OK_AND_ASSIGN_IMPL_(LSERVE_CONCAT_(lserve_statusor_, __LINE__), lhs, rexpr)

namespace lserve::cuda::testing {

// A bf16 buffer filled by DeviceBuffer::Fill(0xFF) reads back as this NaN pattern; an
// output element that still holds it was never written.
inline constexpr uint16_t kPoisonBf16 = 0xFFFF;

inline float Bf16ToFloat(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

// Round to nearest, ties to even, done on the bits so it is independent of the host FPU.
inline uint16_t FloatToBf16(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  if (std::isnan(value)) return static_cast<uint16_t>((bits >> 16) | 0x0040);  // quiet
  const uint32_t rounding = 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

inline bool IsBf16NaN(uint16_t bits) { return (bits & 0x7F80) == 0x7F80 && (bits & 0x7F) != 0; }

// Uniform values in [lo, hi), already rounded to bf16.
inline std::vector<uint16_t> RandomBf16(int64_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<uint16_t> v(n);
  for (uint16_t& b : v) b = FloatToBf16(dist(rng));
  return v;
}

// Tolerance for a bf16 output against a double reference computed from the same
// bf16-rounded inputs: |out − ref| <= kBf16RelTol·|ref| + abs_tol. The output's own rounding
// is at most half a bf16 ulp, 2⁻⁸·|ref|; kBf16RelTol = 2⁻⁷ (one ulp) leaves the same again
// for float32 math and fast intrinsics.
inline constexpr double kBf16RelTol = 1.0 / 128.0;

inline ::testing::AssertionResult Bf16Near(uint16_t out_bits, double ref, double abs_tol) {
  if (out_bits == kPoisonBf16) return ::testing::AssertionFailure() << "never written";
  const double out = Bf16ToFloat(out_bits);
  const double tol = kBf16RelTol * std::fabs(ref) + abs_tol;
  if (std::fabs(out - ref) <= tol) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "out=" << out << " ref=" << ref << " |diff|=" << std::fabs(out - ref) << " > " << tol;
}

// Device tests derive from this: they skip, rather than fail, where no GPU is usable.
// Setting LSERVE_REQUIRE_CUDA=1 turns that skip into a failure, so a GPU run cannot pass
// by skipping everything (e.g. when the driver is missing).
class CudaDeviceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() > 0) return;
    const char* require = std::getenv("LSERVE_REQUIRE_CUDA");
    if (require != nullptr && std::string_view(require) == "1") {
      FAIL() << "LSERVE_REQUIRE_CUDA=1 but no CUDA device or driver is usable";
    }
    GTEST_SKIP() << "no CUDA device or driver on this machine";
  }
};

}  // namespace lserve::cuda::testing

#endif  // LSERVE_TESTS_KERNELS_CUDA_CUDA_TEST_UTIL_H_
