// Token sampling: greedy, temperature, top-k, top-p, with a per-request seeded generator so
// the same seed gives the same tokens on every machine.
#ifndef LSERVE_WORKER_SAMPLER_H_
#define LSERVE_WORKER_SAMPLER_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"

namespace lserve {

struct SamplingParams {
  float temperature = 0.0f;  // 0 selects greedy decoding
  int top_k = 0;             // 0 keeps every token
  float top_p = 1.0f;        // nucleus mass in (0, 1]
  uint64_t seed = 0;
  int max_tokens = 16;
  std::vector<int32_t> stop_token_ids;
};

absl::Status ValidateSamplingParams(const SamplingParams& params, int vocab_size);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Picks the next token from one row of logits.
  int32_t Sample(std::span<const float> logits);

 private:
  double NextUniform();  // [0, 1)

  SamplingParams params_;
  uint64_t state_;
};

// Index of the largest logit; the lowest index wins ties.
int32_t ArgMax(std::span<const float> logits);

}  // namespace lserve

#endif  // LSERVE_WORKER_SAMPLER_H_
