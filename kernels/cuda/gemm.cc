#include "kernels/cuda/gemm.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"

namespace lserve::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;

absl::Status LtStatus(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat("cuBLASLt ", what, ": status ", static_cast<int>(status)));
}

// One shape's descriptors and chosen algorithm.
struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

class LtGemmRunner final : public GemmRunner {
 public:
  ~LtGemmRunner() override {
    for (auto& [key, plan] : plans_) {
      cublasLtMatrixLayoutDestroy(plan.a);
      cublasLtMatrixLayoutDestroy(plan.b);
      cublasLtMatrixLayoutDestroy(plan.d);
      cublasLtMatmulDescDestroy(plan.op);
    }
    if (workspace_ != nullptr) cudaFree(workspace_);
    if (handle_ != nullptr) cublasLtDestroy(handle_);
  }

  absl::Status Init() {
    RETURN_IF_ERROR(LtStatus(cublasLtCreate(&handle_), "create"));
    return internal::CudaStatus(cudaMalloc(&workspace_, kWorkspaceBytes), "GEMM workspace");
  }

  absl::Status Run(const GemmParams& p, void* stream) override {
    if (p.dtype != DType::kBF16 || (p.out_dtype != DType::kBF16 && p.out_dtype != DType::kF32)) {
      return absl::InvalidArgumentError("cuda GEMM takes bf16 x and w, and gives bf16 or f32 y");
    }
    if (p.m < 0 || p.n <= 0 || p.k <= 0) return absl::InvalidArgumentError("GEMM: bad shape");
    if (p.m == 0) return absl::OkStatus();
    const bool bias_in_epilogue = p.bias != nullptr && p.out_dtype == DType::kBF16;
    ASSIGN_OR_RETURN(Plan * plan, PlanFor(p.m, p.n, p.k, p.out_dtype, bias_in_epilogue));
    if (bias_in_epilogue) {
      RETURN_IF_ERROR(
          LtStatus(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                  &p.bias, sizeof(p.bias)),
                   "bias pointer"));
    }
    const float one = 1.0f, zero = 0.0f;
    // Column-major view: y^T (n x m) = w (k x n)^T . x^T (k x m).
    RETURN_IF_ERROR(
        LtStatus(cublasLtMatmul(handle_, plan->op, &one, p.w, plan->a, p.x, plan->b, &zero, p.y,
                                plan->d, p.y, plan->d, &plan->algo, workspace_, kWorkspaceBytes,
                                static_cast<cudaStream_t>(stream)),
                 "matmul"));
    if (p.bias != nullptr && !bias_in_epilogue) {
      return AddBiasF32(static_cast<float*>(p.y), p.bias, p.m, p.n, stream);
    }
    return absl::OkStatus();
  }

 private:
  absl::StatusOr<Plan*> PlanFor(int64_t m, int64_t n, int64_t k, DType out, bool bias) {
    const auto key = std::make_tuple(m, n, k, out == DType::kF32, bias);
    if (auto it = plans_.find(key); it != plans_.end()) return &it->second;
    Plan plan;
    const cudaDataType_t d_type = out == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
    RETURN_IF_ERROR(
        LtStatus(cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc"));
    const cublasOperation_t transpose = CUBLAS_OP_T, keep = CUBLAS_OP_N;
    RETURN_IF_ERROR(LtStatus(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSA,
                                                            &transpose, sizeof(transpose)),
                             "transa"));
    RETURN_IF_ERROR(LtStatus(
        cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof(keep)),
        "transb"));
    if (bias) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      RETURN_IF_ERROR(
          LtStatus(cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                                  sizeof(epilogue)),
                   "epilogue"));
    }
    RETURN_IF_ERROR(LtStatus(cublasLtMatrixLayoutCreate(&plan.a, CUDA_R_16BF, k, n, k), "A"));
    RETURN_IF_ERROR(LtStatus(cublasLtMatrixLayoutCreate(&plan.b, CUDA_R_16BF, k, m, k), "B"));
    RETURN_IF_ERROR(LtStatus(cublasLtMatrixLayoutCreate(&plan.d, d_type, n, m, n), "D"));
    cublasLtMatmulPreference_t preference = nullptr;
    RETURN_IF_ERROR(LtStatus(cublasLtMatmulPreferenceCreate(&preference), "preference"));
    const size_t workspace = kWorkspaceBytes;
    (void)cublasLtMatmulPreferenceSetAttribute(preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                               &workspace, sizeof(workspace));
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t heuristic = cublasLtMatmulAlgoGetHeuristic(
        handle_, plan.op, plan.a, plan.b, plan.d, plan.d, preference, 1, &result, &found);
    cublasLtMatmulPreferenceDestroy(preference);
    if (heuristic != CUBLAS_STATUS_SUCCESS || found == 0) {
      cublasLtMatrixLayoutDestroy(plan.a);
      cublasLtMatrixLayoutDestroy(plan.b);
      cublasLtMatrixLayoutDestroy(plan.d);
      cublasLtMatmulDescDestroy(plan.op);
      return absl::InternalError(
          absl::StrCat("cuBLASLt has no algorithm for GEMM m=", m, " n=", n, " k=", k));
    }
    plan.algo = result.algo;
    return &plans_.emplace(key, plan).first->second;
  }

  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  std::map<std::tuple<int64_t, int64_t, int64_t, bool, bool>, Plan> plans_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<GemmRunner>> GemmRunner::Create() {
  auto runner = std::make_unique<LtGemmRunner>();
  RETURN_IF_ERROR(runner->Init());
  return std::unique_ptr<GemmRunner>(std::move(runner));
}

}  // namespace lserve::cuda
