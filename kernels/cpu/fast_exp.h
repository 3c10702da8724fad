// A branch-free float32 exp that vectorizes, shared by the CPU kernels that exponentiate
// whole rows (softmax, SiLU, attention).
#ifndef LSERVE_KERNELS_CPU_FAST_EXP_H_
#define LSERVE_KERNELS_CPU_FAST_EXP_H_

#include <algorithm>
#include <bit>
#include <cstdint>
#include <limits>

namespace lserve::cpu {

// exp(x) for float32 within ~2 ulp (Cephes expf polynomial), written without branches or
// library calls so that loops over it vectorize; std::exp is a scalar libm call. Returns 0
// below the normal range and +inf above 88 (exp(88) is within 2x of FLT_MAX).
inline float FastExp(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;
  constexpr float kLn2Lo = -2.12194440e-4f;
  // Adding 1.5·2²³ rounds to the nearest integer in the low mantissa bits.
  constexpr float kRound = 12582912.0f;
  // Clamping keeps 2^n a normal float; the out-of-range results are patched at the end.
  constexpr float kMin = -87.3365447f;
  constexpr float kMax = 88.0f;
  const float xc = std::min(std::max(x, kMin), kMax);
  const float n = (xc * kLog2e + kRound) - kRound;
  float r = xc - n * kLn2Hi;
  r = r - n * kLn2Lo;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * r * r + r + 1.0f;
  const int32_t biased = static_cast<int32_t>(n) + 127;
  const float scale = std::bit_cast<float>(static_cast<uint32_t>(biased) << 23);
  const float y = x > kMax ? std::numeric_limits<float>::infinity() : er * scale;
  return x < kMin ? 0.0f : y;
}

// Lanes of the partial sums: float addition is not associative, so without -ffast-math
// the compiler only vectorizes a reduction written with explicit lanes.
inline constexpr int kExpSumLanes = 16;

// x[i] = exp(x[i] - shift); returns the sum.
inline float ExpShiftedAndSum(float* x, int64_t n, float shift) {
  float lanes[kExpSumLanes] = {};
  int64_t i = 0;
  for (; i + kExpSumLanes <= n; i += kExpSumLanes) {
    for (int l = 0; l < kExpSumLanes; ++l) {
      x[i + l] = FastExp(x[i + l] - shift);
      lanes[l] += x[i + l];
    }
  }
  float s = 0.0f;
  for (; i < n; ++i) {
    x[i] = FastExp(x[i] - shift);
    s += x[i];
  }
  for (int l = 0; l < kExpSumLanes; ++l) s += lanes[l];
  return s;
}

}  // namespace lserve::cpu

#endif  // LSERVE_KERNELS_CPU_FAST_EXP_H_
