// Token sampling for the CUDA backend (kernels/sampling_params.h): greedy, temperature,
// top-k and top-p with counter-based per-request draws, from the same distribution as the
// CPU sampler, and logprobs. Row params are device memory and are not validated here
// (requests are validated when they are admitted; a temperature that is not positive
// samples greedily). Vocabularies up to 2^18, at most 64 top logprobs.
#ifndef LSERVE_KERNELS_CUDA_SAMPLING_H_
#define LSERVE_KERNELS_CUDA_SAMPLING_H_

#include "absl/status/status.h"
#include "kernels/sampling_params.h"

namespace lserve::cuda {

absl::Status Sample(const SampleParams& params, void* stream);

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_SAMPLING_H_
