// RMS normalization and the gated SiLU activation for the CUDA backend: bf16 storage
// (params.dtype must be kBF16), float32 math. Params are the shared structs of
// kernels/layer_params.h; streams travel as `void*` (a cudaStream_t, nullptr for the
// legacy default stream) so that this header needs no CUDA types. All pointers are
// device pointers. Launchers validate their arguments before touching the device and
// return the launch error, not the kernel's completion.
#ifndef LSERVE_KERNELS_CUDA_NORM_ACTIVATION_H_
#define LSERVE_KERNELS_CUDA_NORM_ACTIVATION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/layer_params.h"

namespace lserve::cuda {

// Hugging Face LlamaRMSNorm over each row in float32, rounded once to bf16. With
// params.residual (bf16, packed rows), residual += x is rounded to bf16 and stored first,
// and the row normalized is that sum.
absl::Status RmsNorm(const RmsNormParams& params, void* stream);

// out = silu(gate) * up, float32 math, one bf16 rounding.
absl::Status SiluMul(const SiluMulParams& params, void* stream);

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_NORM_ACTIVATION_H_
