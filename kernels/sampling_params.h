// Params of token sampling, shared by every backend. Sampling is counter based: draw k of
// a request uses splitmix64 of (seed, k), so a request resumed elsewhere continues its
// random stream exactly.
#ifndef LSERVE_KERNELS_SAMPLING_PARAMS_H_
#define LSERVE_KERNELS_SAMPLING_PARAMS_H_

#include <cstdint>

#include "kernels/host_device.h"
#include "kernels/params_equality.h"

namespace lserve {

// The uniform double in [0, 1) of draw `draw` of a request seeded with `seed`: splitmix64
// at step draw + 1 of the stream seeded with seed ^ gamma, fully specified, so sampling is
// reproducible across machines, standard libraries and backends.
LSERVE_HOST_DEVICE inline double SamplingUniform(uint64_t seed, uint64_t draw) {
  constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;
  uint64_t z = (seed ^ kGamma) + (draw + 1) * kGamma;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

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
  LSERVE_PARAMS_EQUALITY(SampleParams);
};

}  // namespace lserve

#endif  // LSERVE_KERNELS_SAMPLING_PARAMS_H_
