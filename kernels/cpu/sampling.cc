#include "kernels/cpu/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"

namespace lserve::cpu {

int32_t ArgMax(std::span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

double UniformDraw(uint64_t seed, uint64_t draw) { return SamplingUniform(seed, draw); }

int32_t SampleRow(std::span<const float> logits, const SamplingRow& row) {
  if (row.temperature == 0.0f) return ArgMax(logits);
  const int n = static_cast<int>(logits.size());
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  // Descending logit, ascending id: a total order, so results do not depend on sort details.
  auto by_logit = [&](int32_t a, int32_t b) {
    return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
  };
  const int keep_k = row.top_k > 0 ? std::min(row.top_k, n) : n;
  std::partial_sort(order.begin(), order.begin() + keep_k, order.end(), by_logit);
  order.resize(keep_k);
  std::vector<double> probs(keep_k);
  const double max_logit = logits[order[0]];
  double total = 0.0;
  for (int i = 0; i < keep_k; ++i) {
    probs[i] = std::exp((logits[order[i]] - max_logit) / row.temperature);
    total += probs[i];
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
  double kept_total = 0.0;
  for (int i = 0; i < keep; ++i) kept_total += probs[i];
  double target = UniformDraw(row.seed, row.draw) * kept_total;
  for (int i = 0; i < keep; ++i) {
    target -= probs[i];
    if (target < 0.0) return order[i];
  }
  return order[keep - 1];
}

absl::Status Sample(const SampleParams& p) {
  if (p.rows < 0 || p.vocab <= 0) return absl::InvalidArgumentError("sampling: bad shape");
  for (int r = 0; r < p.rows; ++r) {
    const SamplingRow& row = p.row_params[r];
    if (!std::isfinite(row.temperature) || row.temperature < 0.0f || row.top_k < 0 ||
        !(row.top_p > 0.0f && row.top_p <= 1.0f) || row.top_logprobs > p.max_top_logprobs) {
      return absl::InvalidArgumentError(absl::StrCat("sampling: bad params in row ", r));
    }
    const std::span<const float> logits(p.logits + int64_t{r} * p.vocab, p.vocab);
    const int32_t token = SampleRow(logits, row);
    p.tokens[r] = token;
    if (row.top_logprobs < 0) continue;
    // log_softmax in double over the raw logits.
    const double max_logit = logits[ArgMax(logits)];
    double sum = 0.0;
    for (float x : logits) sum += std::exp(double{x} - max_logit);
    const double log_total = max_logit + std::log(sum);
    p.logprobs[r] = static_cast<float>(logits[token] - log_total);
    if (row.top_logprobs == 0) continue;
    std::vector<int32_t> order(p.vocab);
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + std::min(row.top_logprobs, p.vocab),
                      order.end(), [&](int32_t a, int32_t b) {
                        return logits[a] != logits[b] ? logits[a] > logits[b] : a < b;
                      });
    for (int i = 0; i < p.max_top_logprobs; ++i) {
      const int64_t out = int64_t{r} * p.max_top_logprobs + i;
      const bool used = i < std::min(row.top_logprobs, p.vocab);
      p.top_ids[out] = used ? order[i] : -1;
      p.top_logprobs[out] = used ? static_cast<float>(logits[order[i]] - log_total) : 0.0f;
    }
  }
  return absl::OkStatus();
}

}  // namespace lserve::cpu
