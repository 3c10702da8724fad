// Sampling on the CPU backend: greedy, seeded counter-based draws, top-k, top-p and the
// logprobs of the chosen and best tokens.
#include "kernels/cpu/sampling.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace lserve::cpu {
namespace {

std::vector<float> Logits() { return {1.0f, 3.0f, 2.5f, -1.0f, 3.0f, 0.0f}; }

SamplingRow Row(float temperature, uint64_t seed = 0) {
  SamplingRow row;
  row.temperature = temperature;
  row.seed = seed;
  return row;
}

TEST(SamplingTest, GreedyTakesArgMaxAndLowestIdOnTies) {
  EXPECT_EQ(SampleRow(Logits(), Row(0.0f)), 1);
}

TEST(SamplingTest, SameSeedAndDrawGiveSameTokens) {
  SamplingRow a = Row(1.0f, 42), b = Row(1.0f, 42);
  for (uint64_t i = 0; i < 100; ++i) {
    a.draw = b.draw = i;
    EXPECT_EQ(SampleRow(Logits(), a), SampleRow(Logits(), b));
  }
}

TEST(SamplingTest, DifferentSeedsDiverge) {
  SamplingRow a = Row(1.0f, 1), b = Row(1.0f, 2);
  int differences = 0;
  for (uint64_t i = 0; i < 100; ++i) {
    a.draw = b.draw = i;
    differences += SampleRow(Logits(), a) != SampleRow(Logits(), b);
  }
  EXPECT_GT(differences, 10);
}

// The draws are a fixed stream per seed: what a stateful splitmix64 generator seeded with
// seed ^ gamma would give, so a resumed request continues it exactly.
TEST(SamplingTest, DrawsFollowTheSplitmixStream) {
  uint64_t state = 7 ^ 0x9E3779B97F4A7C15ull;
  for (uint64_t draw = 0; draw < 50; ++draw) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    EXPECT_EQ(UniformDraw(7, draw), static_cast<double>(z >> 11) * 0x1.0p-53);
  }
}

TEST(SamplingTest, TopKOneIsGreedy) {
  SamplingRow row = Row(5.0f);
  row.top_k = 1;
  for (uint64_t i = 0; i < 50; ++i) {
    row.draw = i;
    EXPECT_EQ(SampleRow(Logits(), row), 1);
  }
}

TEST(SamplingTest, TopKRestrictsToTheKBest) {
  SamplingRow row = Row(10.0f);
  row.top_k = 3;
  for (uint64_t i = 0; i < 500; ++i) {
    row.draw = i;
    const int token = SampleRow(Logits(), row);
    EXPECT_TRUE(token == 1 || token == 4 || token == 2) << token;
  }
}

TEST(SamplingTest, TopPKeepsSmallestSetReachingTheMass) {
  // Probabilities 0.5, 0.3, 0.2: top_p 0.7 keeps the first two only.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  SamplingRow row = Row(1.0f);
  row.top_p = 0.7f;
  std::map<int, int> counts;
  for (uint64_t i = 0; i < 4000; ++i) {
    row.draw = i;
    ++counts[SampleRow(logits, row)];
  }
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[0] / 4000.0, 0.5 / 0.8, 0.03);
}

TEST(SamplingTest, TemperatureOneFollowsTheDistribution) {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};
  SamplingRow row = Row(1.0f, 9);
  int ones = 0;
  for (uint64_t i = 0; i < 8000; ++i) {
    row.draw = i;
    ones += SampleRow(logits, row);
  }
  EXPECT_NEAR(ones / 8000.0, 0.75, 0.02);
}

TEST(SamplingTest, ReportsLogprobsOfTheChosenAndTheBestTokens) {
  const std::vector<float> logits = {0.0f, std::log(3.0f), std::log(6.0f), -100.0f};
  std::vector<SamplingRow> rows(2, Row(0.0f));
  rows[0].top_logprobs = 2;
  rows[1].top_logprobs = -1;
  std::vector<float> both = logits;
  both.insert(both.end(), logits.begin(), logits.end());
  std::vector<int32_t> tokens(2), top_ids(2 * 3);
  std::vector<float> logprobs(2), top(2 * 3);
  ASSERT_TRUE(Sample({both.data(), 2, 4, rows.data(), tokens.data(), logprobs.data(), 3,
                      top_ids.data(), top.data()})
                  .ok());
  EXPECT_EQ(tokens, (std::vector<int32_t>{2, 2}));
  const double total = std::log(1.0 + 3.0 + 6.0 + std::exp(-100.0));
  EXPECT_NEAR(logprobs[0], std::log(6.0) - total, 1e-6);
  EXPECT_EQ(top_ids[0], 2);
  EXPECT_EQ(top_ids[1], 1);
  EXPECT_EQ(top_ids[2], -1);  // only two asked for
  EXPECT_NEAR(top[1], std::log(3.0) - total, 1e-6);
  rows[0].top_logprobs = 4;  // more than the buffer holds
  EXPECT_EQ(Sample({both.data(), 2, 4, rows.data(), tokens.data(), logprobs.data(), 3,
                    top_ids.data(), top.data()})
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lserve::cpu
