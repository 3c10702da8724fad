// Internal to kernels/cuda: the argument checks the attention launchers share.
#ifndef LSERVE_KERNELS_CUDA_ATTENTION_CHECKS_H_
#define LSERVE_KERNELS_CUDA_ATTENTION_CHECKS_H_

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/bf16_vec.cuh"

namespace lserve::cuda::internal {

// bf16 pools, head_dim 64 or 128, GQA groups of 1 to max_group, 16-byte aligned q rows.
inline absl::Status CheckAttentionShape(const PagedAttentionParams& p, const char* kernel,
                                        int max_group) {
  if (p.kv.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("cuda ", kernel, " reads bf16 pools only"));
  }
  if (p.kv.head_dim != 64 && p.kv.head_dim != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda ", kernel, ": head_dim ", p.kv.head_dim, " (64 or 128 only)"));
  }
  if (p.kv.num_kv_heads <= 0 || p.num_q_heads % p.kv.num_kv_heads != 0 ||
      p.num_q_heads / p.kv.num_kv_heads > max_group) {
    return absl::InvalidArgumentError(absl::StrCat("cuda ", kernel, ": ", p.num_q_heads,
                                                   " query heads over ", p.kv.num_kv_heads,
                                                   " KV heads (groups of 1 to ", max_group, ")"));
  }
  if (p.q_row_stride % 8 != 0 || !IsAligned16(p.q)) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda ", kernel, ": q rows must be 16-byte aligned"));
  }
  return absl::OkStatus();
}

}  // namespace lserve::cuda::internal

#endif  // LSERVE_KERNELS_CUDA_ATTENTION_CHECKS_H_
