// Rotary position embedding for the CUDA backend (bf16 storage, float32 math), in the
// rotate-half layout of Hugging Face Llama. Conventions as in norm_activation.h: bf16 as
// uint16_t bit patterns, device pointers, `void* stream`.
#ifndef LSERVE_KERNELS_CUDA_ROPE_H_
#define LSERVE_KERNELS_CUDA_ROPE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/layer_params.h"

namespace lserve::cuda {

// Rotates params.x in place (bf16, params.dtype must be kBF16); see RopeParams.
// Positions must be non-negative and below 2^24 (exact as floats).
absl::Status ApplyRope(const RopeParams& params, void* stream);

// Largest head_dim ApplyRope accepts (its cos/sin table lives in shared memory).
inline constexpr int kMaxRopeHeadDim = 1024;

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_ROPE_H_
