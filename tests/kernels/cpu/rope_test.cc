#include "kernels/cpu/rope.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace lserve::cpu {
namespace {

std::vector<float> RandomVector(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

TEST(RopeInverseFrequenciesTest, DefaultIsThetaPower) {
  const std::vector<float> inv = RopeInverseFrequencies({.head_dim = 8, .theta = 10000.0f});
  ASSERT_EQ(inv.size(), 4u);
  EXPECT_EQ(inv[0], 1.0f);
  EXPECT_FLOAT_EQ(inv[1], 0.1f);
  EXPECT_FLOAT_EQ(inv[2], 0.01f);
  EXPECT_FLOAT_EQ(inv[3], 0.001f);
}

TEST(RopeInverseFrequenciesTest, LinearDividesByFactor) {
  const RopeSpec base{.head_dim = 64, .theta = 10000.0f};
  RopeSpec linear = base;
  linear.kind = RopeKind::kLinear;
  linear.factor = 4.0f;
  const std::vector<float> plain = RopeInverseFrequencies(base);
  const std::vector<float> scaled = RopeInverseFrequencies(linear);
  ASSERT_EQ(scaled.size(), 32u);
  for (size_t i = 0; i < scaled.size(); ++i) EXPECT_EQ(scaled[i], plain[i] / 4.0f) << i;
}

// head_dim 8, theta 1e4 → inv_freq {1, 0.1, 0.01, 0.001}, wavelengths 2π/inv_freq ≈ {6.28,
// 62.8, 628, 6283}. With original context 64, factor 8, low 1, high 4 the bands are
// wavelen < 16 (kept), > 64 (divided by 8) and between (smoothed):
//   i=1: smooth = (64/62.83 − 1)/3 = 0.0061977, (1 − smooth)·0.1/8 + smooth·0.1 = 0.0130423.
TEST(RopeInverseFrequenciesTest, Llama3MatchesHandComputedBands) {
  const RopeSpec spec{.head_dim = 8,
                      .theta = 10000.0f,
                      .kind = RopeKind::kLlama3,
                      .factor = 8.0f,
                      .low_freq_factor = 1.0f,
                      .high_freq_factor = 4.0f,
                      .original_max_position_embeddings = 64};
  const std::vector<float> inv = RopeInverseFrequencies(spec);
  ASSERT_EQ(inv.size(), 4u);
  EXPECT_EQ(inv[0], 1.0f);
  EXPECT_NEAR(inv[1], 0.013042256043820465, 1e-6 * 0.0130423);
  EXPECT_NEAR(inv[2], 0.00125, 1e-6 * 0.00125);
  EXPECT_NEAR(inv[3], 0.000125, 1e-6 * 0.000125);
}

// Llama 3.1's rope_scaling. Expected bit patterns come from replaying transformers'
// float32 op sequence (each op rounded to float32) in Python; they cover the kept,
// smoothed and divided bands.
TEST(RopeInverseFrequenciesTest, Llama31MatchesTransformersFloat32Rounding) {
  const RopeSpec spec{.head_dim = 128,
                      .theta = 500000.0f,
                      .kind = RopeKind::kLlama3,
                      .factor = 8.0f,
                      .low_freq_factor = 1.0f,
                      .high_freq_factor = 4.0f,
                      .original_max_position_embeddings = 8192};
  const std::vector<float> inv = RopeInverseFrequencies(spec);
  ASSERT_EQ(inv.size(), 64u);
  const struct {
    int index;
    uint32_t bits;
  } kExpected[] = {{0, 0x3f800000},  {1, 0x3f508ac1},  {5, 0x3eb7ab7d},  {17, 0x3cfaf53f},
                   {20, 0x3c87a9c3}, {25, 0x3bc2aa76}, {30, 0x3ab3d11d}, {33, 0x39a3f108},
                   {40, 0x380fc8f8}, {63, 0x34a4c2ff}};
  for (const auto& e : kExpected) {
    EXPECT_EQ(std::bit_cast<uint32_t>(inv[e.index]), e.bits)
        << "index " << e.index << ": " << inv[e.index] << " vs " << std::bit_cast<float>(e.bits);
  }
}

TEST(ApplyRopeTest, RotatesHalvesAsHuggingFaceDoes) {
  // D = 4 pairs (0, 2) and (1, 3); inv_freq {1, 0.5}; position 1.
  std::vector<float> v = {1, 2, 3, 4};
  const std::vector<float> inv = {1.0f, 0.5f};
  const int32_t pos = 1;
  ApplyRope(v.data(), 1, 1, 4, &pos, inv.data());
  EXPECT_NEAR(v[0], 1 * std::cos(1.0) - 3 * std::sin(1.0), 1e-6);
  EXPECT_NEAR(v[2], 3 * std::cos(1.0) + 1 * std::sin(1.0), 1e-6);
  EXPECT_NEAR(v[1], 2 * std::cos(0.5) - 4 * std::sin(0.5), 1e-6);
  EXPECT_NEAR(v[3], 4 * std::cos(0.5) + 2 * std::sin(0.5), 1e-6);
}

TEST(ApplyRopeTest, PositionZeroIsIdentity) {
  const std::vector<float> inv = RopeInverseFrequencies({.head_dim = 64});
  const std::vector<float> original = RandomVector(3 * 5 * 64, 1);
  std::vector<float> x = original;
  const std::vector<int32_t> positions(3, 0);
  ApplyRope(x.data(), 3, 5, 64, positions.data(), inv.data());
  EXPECT_EQ(x, original);
}

TEST(ApplyRopeTest, PreservesPairNorms) {
  const int head_dim = 128, heads = 3;
  const std::vector<float> inv = RopeInverseFrequencies({.head_dim = head_dim, .theta = 5e5f});
  const std::vector<int32_t> positions = {1, 17, 4095, 131071};
  const std::vector<float> original = RandomVector(4 * heads * head_dim, 2);
  std::vector<float> x = original;
  ApplyRope(x.data(), 4, heads, head_dim, positions.data(), inv.data());
  for (int64_t v = 0; v < 4 * heads; ++v) {
    for (int i = 0; i < head_dim / 2; ++i) {
      const int64_t lo = v * head_dim + i, hi = lo + head_dim / 2;
      const double before = std::hypot(original[lo], original[hi]);
      const double after = std::hypot(x[lo], x[hi]);
      ASSERT_NEAR(after, before, 1e-6 * before + 1e-7) << "vector " << v << " pair " << i;
    }
  }
}

// The fast path rounds the angle to float32 (as transformers does); the oracle keeps it in
// double. The gap is at most half an ulp of the angle plus a few ulp of cos/sin and the
// products: tolerance = pair_norm · (|angle|·2⁻²³ + 1e-6).
TEST(ApplyRopeTest, MatchesReferenceAcrossPositionsAndScalings) {
  for (RopeKind kind : {RopeKind::kDefault, RopeKind::kLinear, RopeKind::kLlama3}) {
    for (int head_dim : {2, 64, 80, 128}) {
      SCOPED_TRACE(testing::Message() << "kind=" << static_cast<int>(kind) << " D=" << head_dim);
      RopeSpec spec{.head_dim = head_dim, .theta = 500000.0f, .kind = kind, .factor = 8.0f};
      const std::vector<float> inv = RopeInverseFrequencies(spec);
      const int heads = 5;
      const std::vector<int32_t> positions = {0, 1, 2, 63, 64, 1000, 8191, 8192, 65535, 131071};
      const int64_t tokens = static_cast<int64_t>(positions.size());
      const std::vector<float> original = RandomVector(tokens * heads * head_dim, head_dim);
      std::vector<float> fast = original, ref = original;
      ApplyRope(fast.data(), tokens, heads, head_dim, positions.data(), inv.data());
      ApplyRopeReference(ref.data(), tokens, heads, head_dim, positions.data(), inv.data());
      const int half = head_dim / 2;
      for (int64_t t = 0; t < tokens; ++t) {
        for (int h = 0; h < heads; ++h) {
          for (int i = 0; i < half; ++i) {
            const int64_t lo = (t * heads + h) * head_dim + i, hi = lo + half;
            const double angle = static_cast<double>(positions[t]) * inv[i];
            const double tol =
                std::hypot(original[lo], original[hi]) * (angle * std::ldexp(1.0, -23) + 1e-6);
            ASSERT_NEAR(fast[lo], ref[lo], tol) << "t=" << t << " h=" << h << " i=" << i;
            ASSERT_NEAR(fast[hi], ref[hi], tol) << "t=" << t << " h=" << h << " i=" << i;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace lserve::cpu
