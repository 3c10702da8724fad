// RMS normalization and the gated SiLU activation for the CUDA backend: bf16 storage,
// float32 math. bf16 tensors are passed as their 16-bit patterns (uint16_t) and streams as
// `void*` (a cudaStream_t, nullptr for the legacy default stream) so that this header needs
// no CUDA types. All pointers are device pointers. Launchers validate their arguments
// before touching the device and return the launch error, not the kernel's completion.
#ifndef LSERVE_KERNELS_CUDA_NORM_ACTIVATION_H_
#define LSERVE_KERNELS_CUDA_NORM_ACTIVATION_H_

#include <cstdint>

#include "absl/status/status.h"

namespace lserve::cuda {

// Hugging Face LlamaRMSNorm over each row:
//   out[r][i] = weight[i] * x[r][i] / sqrt(mean_i(x[r][i]²) + eps)
// computed in float32 and rounded once to bf16. Row strides are in elements; 0 means
// `dim` (packed). out may be x (in place) when both use the same stride.
struct RmsNormParams {
  const uint16_t* x = nullptr;       // bf16 [rows][x_row_stride]
  const uint16_t* weight = nullptr;  // bf16 [dim]
  uint16_t* out = nullptr;           // bf16 [rows][out_row_stride]
  int64_t rows = 0;
  int64_t dim = 0;
  int64_t x_row_stride = 0;
  int64_t out_row_stride = 0;
  float eps = 1e-6f;
};
absl::Status RmsNorm(const RmsNormParams& params, void* stream);

// out = silu(gate) * up with silu(g) = g / (1 + exp(-g)), float32 math, one bf16 rounding.
// Row strides are in elements (0 means `cols`), so gate and up can be the two halves of a
// fused [rows][2·cols] gate_up projection. out may be gate or up when the layouts match.
struct SiluMulParams {
  const uint16_t* gate = nullptr;  // bf16 [rows][gate_row_stride]
  const uint16_t* up = nullptr;    // bf16 [rows][up_row_stride]
  uint16_t* out = nullptr;         // bf16 [rows][out_row_stride]
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t gate_row_stride = 0;
  int64_t up_row_stride = 0;
  int64_t out_row_stride = 0;
};
absl::Status SiluMul(const SiluMulParams& params, void* stream);

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_NORM_ACTIVATION_H_
