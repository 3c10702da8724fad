#include "kernels/cpu/cpu_backend.h"

#include "kernels/cpu/attention.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/norm_activation.h"
#include "kernels/cpu/page_score.h"
#include "kernels/cpu/paged_kv.h"
#include "kernels/cpu/rope.h"
#include "kernels/cpu/sampling.h"

namespace lserve {

absl::StatusOr<BackendTensor> CpuBackend::UploadWeights(const float* host, int64_t elements) {
  BackendTensor tensor;
  tensor.data = host;  // float32 weights are used where they are
  tensor.dtype = DType::kF32;
  return tensor;
}

absl::Status CpuBackend::Embedding(const EmbeddingParams& params) { return cpu::Embedding(params); }
absl::Status CpuBackend::RmsNorm(const RmsNormParams& params) { return cpu::RmsNorm(params); }
absl::Status CpuBackend::Rope(const RopeParams& params) { return cpu::ApplyRope(params); }
absl::Status CpuBackend::SiluMul(const SiluMulParams& params) { return cpu::SiluMul(params); }
absl::Status CpuBackend::Gemm(const GemmParams& params) { return cpu::Gemm(params, pool()); }
absl::Status CpuBackend::AppendKv(const AppendKvParams& params) {
  return cpu::AppendKv(params, pool());
}
absl::Status CpuBackend::PagedAttention(const PagedAttentionParams& params) {
  return cpu::PagedAttention(params, pool());
}
absl::Status CpuBackend::ScorePages(const ScorePagesParams& params) {
  return cpu::ScorePages(params, pool());
}
absl::Status CpuBackend::SelectPages(const SelectPagesParams& params) {
  return cpu::SelectPages(params);
}
absl::Status CpuBackend::Sample(const SampleParams& params) { return cpu::Sample(params); }

}  // namespace lserve
