// Internal to kernels/cuda: the Hopper (sm_90a) prefill kernel behind
// PagedPrefillAttention (paged_attention.h), which checks the arguments first.
#ifndef LSERVE_KERNELS_CUDA_PAGED_PREFILL_SM90_H_
#define LSERVE_KERNELS_CUDA_PAGED_PREFILL_SM90_H_

#include "absl/status/status.h"
#include "kernels/attention_params.h"

namespace lserve::cuda::internal {

inline constexpr int kSm90TileRows = 128;  // query rows per tile: two warpgroups of 64
inline constexpr int kSm90TileKeys = 128;

// Whether `device` runs the sm_90a kernel (compute capability 9.0).
bool PrefillSm90Supported(int device);

// The warp-specialized wgmma kernel; arguments as checked by PagedPrefillAttention,
// `workspace` as its (kPrefillWorkspaceBytes, zeroed).
absl::Status PagedPrefillAttentionSm90(const PagedAttentionParams& params, void* workspace,
                                       int num_sms, void* stream);

}  // namespace lserve::cuda::internal

#endif  // LSERVE_KERNELS_CUDA_PAGED_PREFILL_SM90_H_
