// Internal to kernels/cuda: the arguments of the few-row GEMM kernels (skinny_gemm.cu) and
// the Hopper variant that streams w through bulk copies (skinny_gemm_bulk.cu).
#ifndef LSERVE_KERNELS_CUDA_SKINNY_GEMM_ARGS_H_
#define LSERVE_KERNELS_CUDA_SKINNY_GEMM_ARGS_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"

namespace lserve::cuda::internal {

// y = x . w^T (+ bias): x [m][k], w [n][k] bf16 (with silu_mul, w holds 2n rows, gate then
// up, and y [m][n] = silu(gate) * up); y bf16 or float32.
struct SkinnyArgs {
  const uint16_t* x;
  const uint16_t* w;
  const uint16_t* bias;
  void* y;
  int m;
  int64_t n;
  int64_t k;
};

// Whether the current device runs the bulk-copy variant (sm_90).
bool SkinnyGemmBulkAvailable();
// The bulk-copy variant: each SM's block keeps several tiles of w's rows in flight as bulk
// copies into shared memory (a producer warp and an mbarrier ring) while eight warps
// reduce the tile before. m <= 8, k % 8 == 0, x and w 16-byte aligned.
absl::Status LaunchSkinnyGemmBulk(const SkinnyArgs& args, bool f32_out, bool silu_mul,
                                  cudaStream_t stream);

}  // namespace lserve::cuda::internal

#endif  // LSERVE_KERNELS_CUDA_SKINNY_GEMM_ARGS_H_
