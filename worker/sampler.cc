#include "worker/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace lserve {

absl::Status ValidateSamplingParams(const SamplingParams& p, int vocab_size) {
  if (!std::isfinite(p.temperature) || p.temperature < 0.0f || p.temperature > 100.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be in [0, 100], got ", p.temperature));
  }
  if (p.top_k < 0)
    return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", p.top_k));
  if (!std::isfinite(p.top_p) || p.top_p <= 0.0f || p.top_p > 1.0f) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", p.top_p));
  }
  if (p.max_tokens <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be positive, got ", p.max_tokens));
  }
  for (int32_t id : p.stop_token_ids) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop token id ", id, " is outside the vocabulary [0, ", vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

int32_t ArgMax(std::span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

Sampler::Sampler(const SamplingParams& params)
    : params_(params), state_(params.seed ^ 0x9E3779B97F4A7C15ull) {}

double Sampler::NextUniform() {
  // splitmix64: fully specified, so sampling is reproducible across standard libraries.
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

int32_t Sampler::Sample(std::span<const float> logits) {
  if (params_.temperature == 0.0f) return ArgMax(logits);
  const int n = static_cast<int>(logits.size());
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  // Descending logit, ascending id: a total order, so results do not depend on sort details.
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  };
  const int keep_k = params_.top_k > 0 ? std::min(params_.top_k, n) : n;
  std::partial_sort(order.begin(), order.begin() + keep_k, order.end(), by_logit);
  order.resize(keep_k);
  std::vector<double> probs(keep_k);
  const double max_logit = logits[order[0]];
  double total = 0.0;
  for (int i = 0; i < keep_k; ++i) {
    probs[i] = std::exp((logits[order[i]] - max_logit) / params_.temperature);
    total += probs[i];
  }
  int keep = keep_k;
  if (params_.top_p < 1.0f) {
    double mass = 0.0;
    for (int i = 0; i < keep_k; ++i) {
      mass += probs[i] / total;
      if (mass >= params_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept_total = 0.0;
  for (int i = 0; i < keep; ++i) kept_total += probs[i];
  double target = NextUniform() * kept_total;
  for (int i = 0; i < keep; ++i) {
    target -= probs[i];
    if (target < 0.0) return order[i];
  }
  return order[keep - 1];
}

}  // namespace lserve
