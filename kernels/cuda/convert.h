// float32 ↔ bf16 conversion on the device. Conventions as in norm_activation.h: bf16 as
// uint16_t bit patterns, device pointers, `void* stream`.
#ifndef LSERVE_KERNELS_CUDA_CONVERT_H_
#define LSERVE_KERNELS_CUDA_CONVERT_H_

#include <cstdint>

#include "absl/status/status.h"

namespace lserve::cuda {

// out[i] = in[i] rounded to bf16, to nearest with ties to even. Subnormals are kept (no
// flush to zero), overflow gives ±inf, and NaN stays NaN (quiet).
absl::Status F32ToBf16(const float* in, uint16_t* out, int64_t n, void* stream);

// out[i] = in[i] widened exactly (bit pattern shifted left by 16; NaN payloads kept).
absl::Status Bf16ToF32(const uint16_t* in, float* out, int64_t n, void* stream);

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_CONVERT_H_
