// Params of token sampling, shared by every backend. Sampling is counter based: draw k of
// a request uses splitmix64 of (seed, k), so a request resumed elsewhere continues its
// random stream exactly.
#ifndef LSERVE_KERNELS_SAMPLING_PARAMS_H_
#define LSERVE_KERNELS_SAMPLING_PARAMS_H_

#include <cstdint>

namespace lserve {

struct SamplingRow {
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id on ties)
  int32_t top_k = 0;         // 0: every token
  float top_p = 1.0f;        // nucleus mass in (0, 1]
  uint64_t seed = 0;
  uint64_t draw = 0;          // tokens this request sampled before
  int32_t top_logprobs = -1;  // -1: no logprobs; n >= 0: the chosen one plus the n best
};

// Logprobs are those of the model's distribution (log_softmax of the raw logits), before
// temperature, top-k and top-p, as OpenAI-style APIs report them.
struct SampleParams {
  const float* logits = nullptr;  // [rows][vocab]
  int rows = 0;
  int vocab = 0;
  const SamplingRow* row_params = nullptr;  // [rows]
  int32_t* tokens = nullptr;                // [rows]
  float* logprobs = nullptr;                // [rows]; may be null when no row asks
  int max_top_logprobs = 0;
  int32_t* top_ids = nullptr;     // [rows][max_top_logprobs], best first
  float* top_logprobs = nullptr;  // [rows][max_top_logprobs]
};

}  // namespace lserve

#endif  // LSERVE_KERNELS_SAMPLING_PARAMS_H_
