#include "worker/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace lserve {
namespace {

std::vector<float> Logits() { return {1.0f, 3.0f, 2.5f, -1.0f, 3.0f, 0.0f}; }

TEST(SamplerTest, GreedyTakesArgMaxAndLowestIdOnTies) {
  Sampler sampler(SamplingParams{});
  EXPECT_EQ(sampler.Sample(Logits()), 1);
}

TEST(SamplerTest, SameSeedGivesSameTokens) {
  SamplingParams params;
  params.temperature = 1.0f;
  params.seed = 42;
  Sampler a(params), b(params);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(a.Sample(Logits()), b.Sample(Logits()));
}

TEST(SamplerTest, DifferentSeedsDiverge) {
  SamplingParams params;
  params.temperature = 1.0f;
  params.seed = 1;
  Sampler a(params);
  params.seed = 2;
  Sampler b(params);
  int differences = 0;
  for (int i = 0; i < 100; ++i) differences += a.Sample(Logits()) != b.Sample(Logits());
  EXPECT_GT(differences, 10);
}

TEST(SamplerTest, TopKOneIsGreedy) {
  SamplingParams params;
  params.temperature = 5.0f;
  params.top_k = 1;
  Sampler sampler(params);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(sampler.Sample(Logits()), 1);
}

TEST(SamplerTest, TopKRestrictsToTheKBest) {
  SamplingParams params;
  params.temperature = 10.0f;
  params.top_k = 3;
  Sampler sampler(params);
  for (int i = 0; i < 500; ++i) {
    const int token = sampler.Sample(Logits());
    EXPECT_TRUE(token == 1 || token == 4 || token == 2) << token;
  }
}

TEST(SamplerTest, TopPKeepsSmallestSetReachingTheMass) {
  // Probabilities 0.5, 0.3, 0.2: top_p 0.7 keeps the first two only.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  SamplingParams params;
  params.temperature = 1.0f;
  params.top_p = 0.7f;
  Sampler sampler(params);
  std::map<int, int> counts;
  for (int i = 0; i < 4000; ++i) ++counts[sampler.Sample(logits)];
  EXPECT_EQ(counts[2], 0);
  EXPECT_NEAR(counts[0] / 4000.0, 0.5 / 0.8, 0.03);
}

TEST(SamplerTest, TemperatureOneFollowsTheDistribution) {
  const std::vector<float> logits = {0.0f, std::log(3.0f)};
  SamplingParams params;
  params.temperature = 1.0f;
  params.seed = 9;
  Sampler sampler(params);
  int ones = 0;
  for (int i = 0; i < 8000; ++i) ones += sampler.Sample(logits);
  EXPECT_NEAR(ones / 8000.0, 0.75, 0.02);
}

TEST(SamplerTest, ValidationRejectsAbsurdValues) {
  SamplingParams params;
  params.temperature = -1.0f;
  EXPECT_EQ(ValidateSamplingParams(params, 10).code(), absl::StatusCode::kInvalidArgument);
  params = {};
  params.temperature = NAN;
  EXPECT_EQ(ValidateSamplingParams(params, 10).code(), absl::StatusCode::kInvalidArgument);
  params = {};
  params.top_p = 0.0f;
  EXPECT_EQ(ValidateSamplingParams(params, 10).code(), absl::StatusCode::kInvalidArgument);
  params = {};
  params.top_p = 1.5f;
  EXPECT_EQ(ValidateSamplingParams(params, 10).code(), absl::StatusCode::kInvalidArgument);
  params = {};
  params.top_k = -3;
  EXPECT_EQ(ValidateSamplingParams(params, 10).code(), absl::StatusCode::kInvalidArgument);
  params = {};
  params.max_tokens = 0;
  EXPECT_EQ(ValidateSamplingParams(params, 10).code(), absl::StatusCode::kInvalidArgument);
  params = {};
  params.stop_token_ids = {10};
  EXPECT_EQ(ValidateSamplingParams(params, 10).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams{}, 10).ok());
}

}  // namespace
}  // namespace lserve
