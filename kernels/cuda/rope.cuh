// Rotate-half RoPE arithmetic shared by the RoPE kernel and the fused RoPE + KV append, so
// both round every value the same way. Internal to kernels/cuda .cu files, which must be
// compiled without --use_fast_math (sincosf must stay accurate at large angles).
#ifndef LSERVE_KERNELS_CUDA_ROPE_CUH_
#define LSERVE_KERNELS_CUDA_ROPE_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/bf16_vec.cuh"

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

// The cos/sin table of one position (head_dim / 2 angles: cos first, then sin) in `table`
// (shared memory, head_dim floats), filled by the whole block and ready for every thread
// on return. sincosf (not __sincosf) keeps full accuracy for the large angles of long
// contexts: at position 131072 the angle is ~1.3e5 rad.
__device__ __forceinline__ void FillRopeTable(float position, const float* inv_freq, int head_dim,
                                              float* table) {
  const int half = head_dim / 2;
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    RopeCosSin(position, inv_freq[i], &table[i], &table[half + i]);
  }
  __syncthreads();
}

// RoPE in place of one token's heads (num_heads x head_dim values from `row`) by the whole
// block, from the token's FillRopeTable; kVec values per access (kBf16PerVector needs
// 16-byte aligned rows and head_dim / 2 a multiple of 8).
template <int kVec>
__device__ void RotateTokenHeads(uint16_t* row, int num_heads, int head_dim, const float* table) {
  const int half = head_dim / 2;
  const int vectors_per_head = half / kVec;
  for (int j = threadIdx.x; j < num_heads * vectors_per_head; j += blockDim.x) {
    const int head = j / vectors_per_head;
    const int i0 = (j - head * vectors_per_head) * kVec;
    uint16_t* lo_ptr = row + static_cast<int64_t>(head) * head_dim + i0;
    uint16_t* hi_ptr = lo_ptr + half;
    float lo[kVec];
    float hi[kVec];
    LoadBf16<kVec>(lo_ptr, lo);
    LoadBf16<kVec>(hi_ptr, hi);
#pragma unroll
    for (int k = 0; k < kVec; ++k) RotatePair(lo[k], hi[k], table[i0 + k], table[half + i0 + k]);
    StoreBf16<kVec>(lo_ptr, lo);
    StoreBf16<kVec>(hi_ptr, hi);
  }
}

}  // namespace lserve::cuda::internal

#endif  // LSERVE_KERNELS_CUDA_ROPE_CUH_
