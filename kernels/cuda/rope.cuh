// Rotate-half RoPE arithmetic shared by the RoPE kernel and the fused RoPE + KV append, so
// both round every value the same way. Internal to kernels/cuda .cu files, which must be
// compiled without --use_fast_math (sincosf must stay accurate at large angles).
#ifndef LSERVE_KERNELS_CUDA_ROPE_CUH_
#define LSERVE_KERNELS_CUDA_ROPE_CUH_

#include <cuda_runtime.h>

namespace lserve::cuda::internal {

// cos and sin of position * inv_freq, the product rounded to float32 first (transformers).
__device__ __forceinline__ void RopeCosSin(float position, float inv_freq, float* cos_a,
                                           float* sin_a) {
  sincosf(__fmul_rn(position, inv_freq), sin_a, cos_a);
}

// (lo, hi) -> (lo c - hi s, hi c + lo s), each product rounded on its own (no FMA).
__device__ __forceinline__ void RotatePair(float& lo, float& hi, float cos_a, float sin_a) {
  const float new_lo = __fsub_rn(__fmul_rn(lo, cos_a), __fmul_rn(hi, sin_a));
  hi = __fadd_rn(__fmul_rn(hi, cos_a), __fmul_rn(lo, sin_a));
  lo = new_lo;
}

}  // namespace lserve::cuda::internal

#endif  // LSERVE_KERNELS_CUDA_ROPE_CUH_
