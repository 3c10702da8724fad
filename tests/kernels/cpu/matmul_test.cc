#include "kernels/cpu/matmul.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <vector>

#include "common/thread_pool.h"

namespace lserve::cpu {
namespace {

std::vector<float> RandomVector(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// Float32 accumulation over k terms errs by about √k·u·Σ|x·w| in practice (k·u in the worst
// case); the bound allows 1e-6·Σ_p|x_p·w_p| (≈ 8 ulp of the absolute sum) + 1e-6·|bias|,
// which for k = 768 is ~2e-4 absolute on outputs of magnitude ~10.
void ExpectLinearMatchesReference(int64_t m, int64_t k, int64_t n, bool with_bias,
                                  ThreadPool* pool) {
  SCOPED_TRACE(testing::Message() << "m=" << m << " k=" << k << " n=" << n << " bias=" << with_bias
                                  << " threads=" << (pool ? pool->num_threads() : 0));
  const uint32_t seed = static_cast<uint32_t>(m * 1000003 + k * 1009 + n);
  const std::vector<float> x = RandomVector(m * k, seed);
  const std::vector<float> w = RandomVector(n * k, seed + 1);
  const std::vector<float> bias = RandomVector(n, seed + 2);
  const float* b = with_bias ? bias.data() : nullptr;

  // NaN-filled so an output the kernel forgot to write fails the comparison.
  std::vector<float> y(m * n, std::numeric_limits<float>::quiet_NaN());
  std::vector<float> ref(m * n);
  Linear(x.data(), m, k, w.data(), n, b, y.data(), pool);
  LinearReference(x.data(), m, k, w.data(), n, b, ref.data());

  int failures = 0;
  for (int64_t i = 0; i < m && failures < 5; ++i) {
    for (int64_t j = 0; j < n && failures < 5; ++j) {
      double abs_sum = 0.0;
      for (int64_t p = 0; p < k; ++p) abs_sum += std::fabs(double{x[i * k + p]} * w[j * k + p]);
      const double tol = 1e-6 * abs_sum + (b ? 1e-6 * std::fabs(b[j]) : 0.0) + 1e-30;
      const double err = std::fabs(double{y[i * n + j]} - ref[i * n + j]);
      if (!(err <= tol)) {
        ADD_FAILURE() << "y[" << i << "][" << j << "] = " << y[i * n + j] << ", reference "
                      << ref[i * n + j] << ", tolerance " << tol;
        ++failures;
      }
    }
  }
}

void RunOddShapes(ThreadPool* pool) {
  for (int64_t m : {1, 2, 3, 7, 8, 17, 64, 129}) {
    for (int64_t k : {1, 3, 64, 65, 127, 768}) {
      for (int64_t n : {1, 5, 33, 96, 257}) {
        for (bool with_bias : {false, true}) ExpectLinearMatchesReference(m, k, n, with_bias, pool);
      }
    }
  }
}

TEST(LinearTest, MatchesReferenceOnOddShapesWithoutPool) { RunOddShapes(nullptr); }

TEST(LinearTest, MatchesReferenceOnOddShapesWithTwoThreads) {
  ThreadPool pool(2);
  RunOddShapes(&pool);
}

TEST(LinearTest, MatchesReferenceOnOddShapesWithFourThreads) {
  ThreadPool pool(4);
  RunOddShapes(&pool);
}

// Large m with k beyond one L2 block takes the k-blocked path, where later blocks add
// into partial sums already stored in y.
TEST(LinearTest, MatchesReferenceWhenKIsBlocked) {
  ThreadPool pool(2);
  ExpectLinearMatchesReference(600, 1100, 37, /*with_bias=*/true, &pool);
  ExpectLinearMatchesReference(515, 2053, 9, /*with_bias=*/false, nullptr);
}

TEST(LinearTest, MatchesReferenceForLongDecodeRows) {
  ThreadPool pool(2);
  ExpectLinearMatchesReference(1, 4099, 67, /*with_bias=*/true, &pool);
  ExpectLinearMatchesReference(8, 4096, 130, /*with_bias=*/false, &pool);
}

TEST(LinearTest, MoreThreadsThanOutputsIsFine) {
  ThreadPool pool(4);
  ExpectLinearMatchesReference(3, 17, 1, /*with_bias=*/true, &pool);
  ExpectLinearMatchesReference(1, 5, 2, /*with_bias=*/false, &pool);
}

TEST(LinearTest, ZeroInnerDimensionYieldsBias) {
  const std::vector<float> bias = {1.5f, -2.0f, 0.25f};
  std::vector<float> y(2 * 3, std::numeric_limits<float>::quiet_NaN());
  Linear(nullptr, 2, 0, nullptr, 3, bias.data(), y.data(), nullptr);
  EXPECT_EQ(y, (std::vector<float>{1.5f, -2.0f, 0.25f, 1.5f, -2.0f, 0.25f}));
  Linear(nullptr, 2, 0, nullptr, 3, nullptr, y.data(), nullptr);
  EXPECT_EQ(y, std::vector<float>(6, 0.0f));
}

TEST(LinearTest, ComputesKnownSmallProduct) {
  // x = [[1, 2], [3, 4]], w = [[1, 0], [0, 1], [1, 1]] (out = 3, in = 2), bias = [0, 10, -1].
  const std::vector<float> x = {1, 2, 3, 4};
  const std::vector<float> w = {1, 0, 0, 1, 1, 1};
  const std::vector<float> bias = {0, 10, -1};
  std::vector<float> y(6);
  Linear(x.data(), 2, 2, w.data(), 3, bias.data(), y.data(), nullptr);
  EXPECT_EQ(y, (std::vector<float>{1, 12, 2, 3, 14, 6}));
}

}  // namespace
}  // namespace lserve::cpu
