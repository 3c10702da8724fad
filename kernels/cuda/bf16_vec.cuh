// Device helpers shared by the bf16 kernels: conversions, 16-byte vector loads/stores,
// reductions and the SiLU activation. Internal to kernels/cuda .cu files.
#ifndef LSERVE_KERNELS_CUDA_BF16_VEC_CUH_
#define LSERVE_KERNELS_CUDA_BF16_VEC_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace lserve::cuda::internal {

// Vector width, in bf16 elements, of one 16-byte access.
inline constexpr int kBf16PerVector = 8;

__device__ __forceinline__ float Bf16ToFloat(uint16_t bits) {
  return __uint_as_float(static_cast<uint32_t>(bits) << 16);
}

// silu(g) = g sigmoid(g), one expression for every kernel that applies it, so fused and
// separate activations agree bitwise.
__device__ __forceinline__ float Silu(float g) { return g / (1.0f + expf(-g)); }

// Round to nearest, ties to even; NaN stays NaN.
__device__ __forceinline__ uint16_t FloatToBf16(float value) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(value));
}

__device__ __forceinline__ uint32_t PackBf16x2(float lo, float hi) {
  return static_cast<uint32_t>(FloatToBf16(lo)) | (static_cast<uint32_t>(FloatToBf16(hi)) << 16);
}

// Eight bf16 values packed in 16 bytes, as float32.
__device__ __forceinline__ void UnpackBf16x8(const uint4& raw, float* dst) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    dst[2 * w] = __uint_as_float(words[w] << 16);
    dst[2 * w + 1] = __uint_as_float(words[w] & 0xFFFF0000u);
  }
}

// Loads kVec consecutive bf16 values as floats: one 16-byte access for kVec == 8 (the
// address must then be 16-byte aligned), scalar accesses for kVec == 1.
template <int kVec>
__device__ __forceinline__ void LoadBf16(const uint16_t* src, float (&dst)[kVec]) {
  static_assert(kVec == 1 || kVec == kBf16PerVector);
  if constexpr (kVec == kBf16PerVector) {
    const uint4 raw = *reinterpret_cast<const uint4*>(src);
    UnpackBf16x8(raw, dst);
  } else {
    dst[0] = Bf16ToFloat(*src);
  }
}

template <int kVec>
__device__ __forceinline__ void StoreBf16(uint16_t* dst, const float (&src)[kVec]) {
  static_assert(kVec == 1 || kVec == kBf16PerVector);
  if constexpr (kVec == kBf16PerVector) {
    uint4 raw;
    raw.x = PackBf16x2(src[0], src[1]);
    raw.y = PackBf16x2(src[2], src[3]);
    raw.z = PackBf16x2(src[4], src[5]);
    raw.w = PackBf16x2(src[6], src[7]);
    *reinterpret_cast<uint4*>(dst) = raw;
  } else {
    *dst = FloatToBf16(src[0]);
  }
}

__device__ __forceinline__ float WarpSum(float value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    value += __shfl_xor_sync(0xFFFFFFFFu, value, offset);
  }
  return value;
}

// Sum over the whole block, returned to every thread. blockDim.x must be a multiple of 32.
// Uses one barrier; call at most once per kernel (the scratch is not reset).
__device__ __forceinline__ float BlockSum(float value) {
  __shared__ float warp_sums[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  value = WarpSum(value);
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  const int num_warps = blockDim.x >> 5;
  return WarpSum(lane < num_warps ? warp_sums[lane] : 0.0f);
}

__host__ __device__ inline bool IsAligned16(const void* pointer) {
  return (reinterpret_cast<uintptr_t>(pointer) & 15) == 0;
}

}  // namespace lserve::cuda::internal

#endif  // LSERVE_KERNELS_CUDA_BF16_VEC_CUH_
