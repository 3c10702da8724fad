// Rotary position embedding for the CUDA backend (bf16 storage, float32 math), in the
// rotate-half layout of Hugging Face Llama. Conventions as in norm_activation.h: bf16 as
// uint16_t bit patterns, device pointers, `void* stream`.
#ifndef LSERVE_KERNELS_CUDA_ROPE_H_
#define LSERVE_KERNELS_CUDA_ROPE_H_

#include <cstdint>

#include "absl/status/status.h"

namespace lserve::cuda {

// Rotates x in place. Token t's heads start at x + t·token_stride (elements; 0 means
// num_heads·head_dim), head h at + h·head_dim, so q or k inside a fused qkv row works.
// For i < D/2, with the angle a = float(positions[t]) · inv_freq[i] formed as a float32
// product (as transformers does, so large positions agree with it):
//   v'[i] = v[i]·cos a − v[i + D/2]·sin a,   v'[i + D/2] = v[i + D/2]·cos a + v[i]·sin a.
// inv_freq comes from cpu::RopeInverseFrequencies (any rope_scaling kind), copied to the
// device. Positions must be non-negative and below 2²⁴ (exact as floats).
struct RopeParams {
  uint16_t* x = nullptr;               // bf16, see above
  const int32_t* positions = nullptr;  // [num_tokens]
  const float* inv_freq = nullptr;     // [head_dim / 2]
  int64_t num_tokens = 0;
  int num_heads = 0;
  int head_dim = 0;
  int64_t token_stride = 0;
};
absl::Status ApplyRope(const RopeParams& params, void* stream);

// Largest head_dim ApplyRope accepts (its cos/sin table lives in shared memory).
inline constexpr int kMaxRopeHeadDim = 1024;

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_ROPE_H_
