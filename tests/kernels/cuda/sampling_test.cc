// The GPU sampler against the CPU sampler's definition: greedy picks the CPU's argmax
// (ties to the lowest id); with temperature, top-k and top-p, every token drawn lies in
// the support the CPU sampler computes, and over 20,000 draws each token's frequency is
// within 5 standard deviations (+0.002) of its probability; logprobs and top logprobs
// equal the CPU's (1e-5).
#include "kernels/cpu/sampling.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cuda/device.h"
#include "kernels/cuda/device_buffer.h"
#include "kernels/cuda/sampling.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace lserve::cuda {
namespace {

using testing::CudaDeviceTest;

// The CPU sampler's distribution for one row: token -> probability.
std::map<int32_t, double> CpuDistribution(const std::vector<float>& logits,
                                          const SamplingRow& row) {
  const int n = static_cast<int>(logits.size());
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  });
  const int keep_k = row.top_k > 0 ? std::min(row.top_k, n) : n;
  std::vector<double> probs(keep_k);
  double total = 0.0;
  for (int i = 0; i < keep_k; ++i) {
    total += probs[i] = std::exp((logits[order[i]] - logits[order[0]]) / row.temperature);
  }
  int keep = keep_k;
  if (row.top_p < 1.0f) {
    double mass = 0.0;
    for (int i = 0; i < keep_k; ++i) {
      mass += probs[i] / total;
      if (mass >= row.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0.0;
  for (int i = 0; i < keep; ++i) kept += probs[i];
  std::map<int32_t, double> distribution;
  for (int i = 0; i < keep; ++i) distribution[order[i]] = probs[i] / kept;
  return distribution;
}

struct GpuSample {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  std::vector<int32_t> top_ids;
  std::vector<float> top_logprobs;
};

GpuSample RunGpu(const std::vector<float>& logits, int vocab, const std::vector<SamplingRow>& rows,
                 int max_top) {
  GpuSample out;
  const int n = static_cast<int>(rows.size());
  auto d_logits = Upload(logits);
  auto d_rows = Upload(rows);
  auto d_tokens = DeviceBuffer::Allocate(n * 4);
  auto d_logprobs = DeviceBuffer::Allocate(n * 4);
  auto d_top_ids = DeviceBuffer::Allocate(std::max(1, n * max_top) * 4);
  auto d_top = DeviceBuffer::Allocate(std::max(1, n * max_top) * 4);
  EXPECT_TRUE(d_logits.ok() && d_rows.ok() && d_tokens.ok() && d_logprobs.ok() && d_top_ids.ok() &&
              d_top.ok());
  SampleParams p;
  p.logits = d_logits->as<float>();
  p.rows = n;
  p.vocab = vocab;
  p.row_params = d_rows->as<SamplingRow>();
  p.tokens = d_tokens->as<int32_t>();
  p.logprobs = d_logprobs->as<float>();
  p.max_top_logprobs = max_top;
  p.top_ids = d_top_ids->as<int32_t>();
  p.top_logprobs = d_top->as<float>();
  EXPECT_TRUE(Sample(p, nullptr).ok());
  out.tokens = *Download<int32_t>(*d_tokens, n);
  out.logprobs = *Download<float>(*d_logprobs, n);
  out.top_ids = *Download<int32_t>(*d_top_ids, n * max_top);
  out.top_logprobs = *Download<float>(*d_top, n * max_top);
  return out;
}

class SamplingCudaTest : public CudaDeviceTest {};

TEST_F(SamplingCudaTest, GreedyLogprobsAndTopLogprobsEqualTheCpu) {
  const int vocab = 50021;
  const int rows = 6;
  std::mt19937 rng(4);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(int64_t{rows} * vocab);
  for (float& x : logits) x = std::round(normal(rng) * 8.0f) / 8.0f;  // many ties
  std::vector<SamplingRow> params(rows);
  for (SamplingRow& row : params) row.top_logprobs = 5;
  params[2].top_logprobs = 0;
  params[3].top_logprobs = -1;
  const GpuSample gpu = RunGpu(logits, vocab, params, 5);
  std::vector<int32_t> tokens(rows), top_ids(rows * 5);
  std::vector<float> logprobs(rows), top_logprobs(rows * 5);
  SampleParams cpu;
  cpu.logits = logits.data();
  cpu.rows = rows;
  cpu.vocab = vocab;
  cpu.row_params = params.data();
  cpu.tokens = tokens.data();
  cpu.logprobs = logprobs.data();
  cpu.max_top_logprobs = 5;
  cpu.top_ids = top_ids.data();
  cpu.top_logprobs = top_logprobs.data();
  ASSERT_TRUE(cpu::Sample(cpu).ok());
  EXPECT_EQ(gpu.tokens, tokens);
  for (int r = 0; r < rows; ++r) {
    if (params[r].top_logprobs < 0) continue;
    EXPECT_NEAR(gpu.logprobs[r], logprobs[r], 1e-5) << r;
    for (int k = 0; k < params[r].top_logprobs; ++k) {
      EXPECT_EQ(gpu.top_ids[r * 5 + k], top_ids[r * 5 + k]) << r << " " << k;
      EXPECT_NEAR(gpu.top_logprobs[r * 5 + k], top_logprobs[r * 5 + k], 1e-5);
    }
  }
}

TEST_F(SamplingCudaTest, DrawsFollowTheCpuDistributionWithTopKAndTopP) {
  const int vocab = 300;
  std::mt19937 rng(8);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> row_logits(vocab);
  for (float& x : row_logits) x = normal(rng);
  row_logits[17] = row_logits[40];  // a tie
  struct Setting {
    float temperature;
    int top_k;
    float top_p;
  };
  for (const Setting& setting : std::vector<Setting>{
           {1.0f, 0, 1.0f}, {0.7f, 20, 1.0f}, {1.3f, 0, 0.8f}, {0.9f, 50, 0.5f}, {2.0f, 1, 1.0f}}) {
    SCOPED_TRACE(::testing::Message() << "T=" << setting.temperature << " k=" << setting.top_k
                                      << " p=" << setting.top_p);
    const int draws = 20000;
    std::vector<float> logits;
    std::vector<SamplingRow> params(draws);
    for (int d = 0; d < draws; ++d) {
      logits.insert(logits.end(), row_logits.begin(), row_logits.end());
      params[d].temperature = setting.temperature;
      params[d].top_k = setting.top_k;
      params[d].top_p = setting.top_p;
      params[d].seed = 99;
      params[d].draw = d;
    }
    const GpuSample gpu = RunGpu(logits, vocab, params, 0);
    const std::map<int32_t, double> expected = CpuDistribution(row_logits, params[0]);
    std::map<int32_t, int> counts;
    for (int32_t t : gpu.tokens) {
      ASSERT_TRUE(expected.count(t)) << "token " << t << " is outside the CPU's support";
      ++counts[t];
    }
    for (const auto& [token, p] : expected) {
      const double freq = static_cast<double>(counts[token]) / draws;
      EXPECT_NEAR(freq, p, 5.0 * std::sqrt(p * (1.0 - p) / draws) + 0.002) << "token " << token;
    }
  }
}

}  // namespace
}  // namespace lserve::cuda
