// Token sampling for the CPU backend: greedy, temperature, top-k and top-p, counter-based
// random draws (kernels/sampling_params.h), and the chosen and top logprobs.
#ifndef LSERVE_KERNELS_CPU_SAMPLING_H_
#define LSERVE_KERNELS_CPU_SAMPLING_H_

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "kernels/sampling_params.h"

namespace lserve::cpu {

// Index of the largest logit; the lowest index wins ties.
int32_t ArgMax(std::span<const float> logits);

// The uniform double in [0, 1) of draw `draw` of a request seeded with `seed`.
double UniformDraw(uint64_t seed, uint64_t draw);

// One row: the token the row's params pick.
int32_t SampleRow(std::span<const float> logits, const SamplingRow& row);

absl::Status Sample(const SampleParams& params);

}  // namespace lserve::cpu

#endif  // LSERVE_KERNELS_CPU_SAMPLING_H_
