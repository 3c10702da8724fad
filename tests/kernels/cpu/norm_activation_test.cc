#include "kernels/cpu/norm_activation.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace lserve::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<float> RandomVector(int64_t n, uint32_t seed, float lo, float hi) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// RmsNorm: float32 sum of squares over `dim` terms, all positive, so the relative error of
// the mean is ~√dim·u; the output tolerance is 4e-6 relative + 1e-7·|weight| absolute.
TEST(RmsNormTest, MatchesReferenceOverOddDims) {
  for (int64_t dim : {1, 3, 16, 17, 64, 127, 768, 4096}) {
    SCOPED_TRACE(testing::Message() << "dim=" << dim);
    const int64_t rows = 3;
    const std::vector<float> x = RandomVector(rows * dim, 11 + dim, -3.0f, 3.0f);
    const std::vector<float> weight = RandomVector(dim, 12 + dim, 0.5f, 1.5f);
    std::vector<float> out(rows * dim), ref(rows * dim);
    RmsNorm(x.data(), rows, dim, weight.data(), 1e-5f, out.data());
    RmsNormReference(x.data(), rows, dim, weight.data(), 1e-5f, ref.data());
    for (int64_t i = 0; i < rows * dim; ++i) {
      ASSERT_NEAR(out[i], ref[i], 4e-6 * std::fabs(ref[i]) + 1e-7 * weight[i % dim]) << i;
    }
  }
}

TEST(RmsNormTest, WorksInPlace) {
  const int64_t dim = 65;
  std::vector<float> x = RandomVector(2 * dim, 3, -1.0f, 1.0f);
  const std::vector<float> weight = RandomVector(dim, 4, 0.5f, 1.5f);
  std::vector<float> expected(2 * dim);
  RmsNorm(x.data(), 2, dim, weight.data(), 1e-6f, expected.data());
  RmsNorm(x.data(), 2, dim, weight.data(), 1e-6f, x.data());
  EXPECT_EQ(x, expected);
}

TEST(RmsNormTest, ZeroRowIsZeroThanksToEpsilon) {
  const std::vector<float> x(8, 0.0f), weight(8, 2.0f);
  std::vector<float> out(8, 1.0f);
  RmsNorm(x.data(), 1, 8, weight.data(), 1e-6f, out.data());
  EXPECT_EQ(out, std::vector<float>(8, 0.0f));
}

// SiluMul: the vectorized exp is within ~2 ulp, so 1e-6 relative with a 1e-30 floor
// (silu underflows for very negative inputs) holds across [-100, 100].
TEST(SiluMulTest, MatchesReferenceAcrossWideRange) {
  const int64_t n = 4099;
  std::vector<float> gate = RandomVector(n, 5, -100.0f, 100.0f);
  for (int64_t i = 0; i < 200; ++i) gate[i] = -10.0f + 0.1f * static_cast<float>(i);
  gate[200] = 0.0f;
  gate[201] = -87.5f;
  gate[202] = 89.0f;
  gate[203] = -1e30f;
  gate[204] = 1e30f;
  const std::vector<float> up = RandomVector(n, 6, -2.0f, 2.0f);
  std::vector<float> out(n), ref(n);
  SiluMul(gate.data(), up.data(), n, out.data());
  SiluMulReference(gate.data(), up.data(), n, ref.data());
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_NEAR(out[i], ref[i], 1e-6 * std::fabs(ref[i]) + 1e-30) << "gate=" << gate[i];
  }
}

TEST(SiluMulTest, WorksInPlaceOnGate) {
  std::vector<float> gate = RandomVector(37, 7, -5.0f, 5.0f);
  const std::vector<float> up = RandomVector(37, 8, -1.0f, 1.0f);
  std::vector<float> expected(37);
  SiluMul(gate.data(), up.data(), 37, expected.data());
  SiluMul(gate.data(), up.data(), 37, gate.data());
  EXPECT_EQ(gate, expected);
}

TEST(AddInPlaceTest, AddsElementwise) {
  std::vector<float> acc = {1, 2, 3, 4, 5};
  const std::vector<float> x = {0.5f, -2, 0, 1, -5};
  AddInPlace(acc.data(), x.data(), 5);
  EXPECT_EQ(acc, (std::vector<float>{1.5f, 0, 3, 5, 0}));
}

double Sum(const std::vector<float>& v) {
  double s = 0.0;
  for (float f : v) s += f;
  return s;
}

// Softmax: probabilities within 2e-6 relative + 1e-9 absolute of the double oracle.
TEST(SoftmaxTest, MatchesReferenceAndSumsToOne) {
  for (int64_t n : {1, 2, 15, 16, 17, 100, 1000, 4097}) {
    SCOPED_TRACE(testing::Message() << "n=" << n);
    std::vector<float> x = RandomVector(n, 9 + n, -20.0f, 20.0f);
    std::vector<double> ref(n);
    SoftmaxReference(x.data(), n, ref.data());
    Softmax(x.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(x[i], ref[i], 2e-6 * ref[i] + 1e-9) << i;
    EXPECT_NEAR(Sum(x), 1.0, 1e-5);
  }
}

TEST(SoftmaxTest, NegativeInfinityEntriesGetZeroProbability) {
  std::vector<float> x = {-kInf, 1.0f, -kInf, 1.0f, -kInf};
  Softmax(x.data(), 5);
  EXPECT_EQ(x, (std::vector<float>{0.0f, 0.5f, 0.0f, 0.5f, 0.0f}));

  std::vector<float> wide(40, -kInf);
  wide[33] = -3.0f;
  Softmax(wide.data(), 40);
  for (int i = 0; i < 40; ++i) EXPECT_EQ(wide[i], i == 33 ? 1.0f : 0.0f) << i;
}

TEST(SoftmaxTest, AllNegativeInfinityGivesZeros) {
  std::vector<float> x(19, -kInf);
  Softmax(x.data(), 19);
  EXPECT_EQ(x, std::vector<float>(19, 0.0f));
  std::vector<double> ref(19, 1.0);
  const std::vector<float> masked(19, -kInf);
  SoftmaxReference(masked.data(), 19, ref.data());
  EXPECT_EQ(ref, std::vector<double>(19, 0.0));
}

TEST(SoftmaxTest, LargeValuesDoNotOverflow) {
  std::vector<float> x = {1e30f, 1e30f, -1e30f, 3e38f, -3e38f, 3e38f - 1e32f};
  std::vector<double> ref(x.size());
  SoftmaxReference(x.data(), static_cast<int64_t>(x.size()), ref.data());
  Softmax(x.data(), static_cast<int64_t>(x.size()));
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_TRUE(std::isfinite(x[i])) << i;
    EXPECT_NEAR(x[i], ref[i], 1e-6) << i;
  }
  EXPECT_NEAR(Sum(x), 1.0, 1e-6);

  std::vector<float> near = {1000.0f, 999.0f, 998.0f};
  Softmax(near.data(), 3);
  EXPECT_NEAR(near[0], 0.66524096, 1e-6);
  EXPECT_NEAR(near[1], 0.24472847, 1e-6);
  EXPECT_NEAR(near[2], 0.09003057, 1e-6);
}

}  // namespace
}  // namespace lserve::cpu
