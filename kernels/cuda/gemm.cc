#include "kernels/cuda/gemm.h"

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/norm_activation.h"

namespace lserve::cuda {
namespace {

constexpr size_t kWorkspaceBytes = size_t{32} << 20;
// Candidates asked of cuBLASLt's heuristic per shape, and timed runs of each on the first
// call of that shape. Only shapes of at most kMaxTunedRows rows are timed: decode steps,
// whose row counts are bounded by the batch and where the heuristic's pick is weakest;
// prefill chunks come in any row count, so timing each would cost a burst of GEMMs on
// every new prompt length, and there the heuristic's first choice is kept.
constexpr int kCandidates = 8;
constexpr int kTimedRuns = 3;
constexpr int64_t kMaxTunedRows = 64;

// LSERVE_GEMM_TUNE=0 keeps the heuristic's first choice instead of timing the candidates.
bool TuningEnabled() {
  static const bool enabled = [] {
    const char* value = std::getenv("LSERVE_GEMM_TUNE");
    return value == nullptr || std::string(value) != "0";
  }();
  return enabled;
}

// cuBLASLt is opened at run time rather than linked: its 94 KB of thread-local storage
// would otherwise be static TLS in every thread of the process, more than the stacks of
// the metrics server's worker threads hold, and every process linking the kernels (the
// worker, the router's tests) would load it even on machines without a GPU.
struct CublasLtApi {
#define LSERVE_LT_FUNCTION(name) decltype(&::name) name = nullptr;
  LSERVE_LT_FUNCTION(cublasLtCreate)
  LSERVE_LT_FUNCTION(cublasLtDestroy)
  LSERVE_LT_FUNCTION(cublasLtMatmulDescCreate)
  LSERVE_LT_FUNCTION(cublasLtMatmulDescDestroy)
  LSERVE_LT_FUNCTION(cublasLtMatmulDescSetAttribute)
  LSERVE_LT_FUNCTION(cublasLtMatrixLayoutCreate)
  LSERVE_LT_FUNCTION(cublasLtMatrixLayoutDestroy)
  LSERVE_LT_FUNCTION(cublasLtMatmulPreferenceCreate)
  LSERVE_LT_FUNCTION(cublasLtMatmulPreferenceDestroy)
  LSERVE_LT_FUNCTION(cublasLtMatmulPreferenceSetAttribute)
  LSERVE_LT_FUNCTION(cublasLtMatmulAlgoGetHeuristic)
  LSERVE_LT_FUNCTION(cublasLtMatmul)
#undef LSERVE_LT_FUNCTION
};

absl::StatusOr<const CublasLtApi*> LoadCublasLt() {
  static const absl::StatusOr<CublasLtApi> api = []() -> absl::StatusOr<CublasLtApi> {
    std::string names[] = {"libcublasLt.so.13", "libcublasLt.so", ""};
    if (const char* home = std::getenv("CUDA_HOME")) {
      names[2] = std::string(home) + "/lib64/libcublasLt.so.13";
    } else {
      names[2] = "/usr/local/cuda/lib64/libcublasLt.so.13";
    }
    void* library = nullptr;
    for (const std::string& name : names) {
      library = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (library != nullptr) break;
    }
    if (library == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot load cuBLASLt (libcublasLt.so.13): ", dlerror()));
    }
    CublasLtApi loaded;
    bool complete = true;
#define LSERVE_LT_LOAD(name)                                                    \
  loaded.name = reinterpret_cast<decltype(loaded.name)>(dlsym(library, #name)); \
  complete = complete && loaded.name != nullptr;
    LSERVE_LT_LOAD(cublasLtCreate)
    LSERVE_LT_LOAD(cublasLtDestroy)
    LSERVE_LT_LOAD(cublasLtMatmulDescCreate)
    LSERVE_LT_LOAD(cublasLtMatmulDescDestroy)
    LSERVE_LT_LOAD(cublasLtMatmulDescSetAttribute)
    LSERVE_LT_LOAD(cublasLtMatrixLayoutCreate)
    LSERVE_LT_LOAD(cublasLtMatrixLayoutDestroy)
    LSERVE_LT_LOAD(cublasLtMatmulPreferenceCreate)
    LSERVE_LT_LOAD(cublasLtMatmulPreferenceDestroy)
    LSERVE_LT_LOAD(cublasLtMatmulPreferenceSetAttribute)
    LSERVE_LT_LOAD(cublasLtMatmulAlgoGetHeuristic)
    LSERVE_LT_LOAD(cublasLtMatmul)
#undef LSERVE_LT_LOAD
    if (!complete) return absl::FailedPreconditionError("cuBLASLt lacks a function lserve uses");
    return loaded;
  }();
  if (!api.ok()) return api.status();
  return &*api;
}

absl::Status LtStatus(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return absl::InternalError(
      absl::StrCat("cuBLASLt ", what, ": status ", static_cast<int>(status)));
}

// One shape's descriptors, the heuristic's candidate algorithms (best guess first) and,
// once timed, the fastest of them.
struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  std::vector<cublasLtMatmulAlgo_t> candidates;
  cublasLtMatmulAlgo_t algo{};
  bool tuned = false;
  int skinny = -1;  // the SkinnyGemm variant that timed fastest, or -1
};

class LtGemmRunner final : public GemmRunner {
 public:
  ~LtGemmRunner() override {
    for (auto& [key, plan] : plans_) {
      api_->cublasLtMatrixLayoutDestroy(plan.a);
      api_->cublasLtMatrixLayoutDestroy(plan.b);
      api_->cublasLtMatrixLayoutDestroy(plan.d);
      api_->cublasLtMatmulDescDestroy(plan.op);
    }
    if (workspace_ != nullptr) cudaFree(workspace_);
    if (handle_ != nullptr) api_->cublasLtDestroy(handle_);
  }

  absl::Status Init() {
    ASSIGN_OR_RETURN(api_, LoadCublasLt());
    RETURN_IF_ERROR(LtStatus(api_->cublasLtCreate(&handle_), "create"));
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
          LtStatus(api_->cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                        &p.bias, sizeof(p.bias)),
                   "bias pointer"));
    }
    const cudaStream_t cuda_stream = static_cast<cudaStream_t>(stream);
    if (!plan->tuned) RETURN_IF_ERROR(Tune(*plan, p, cuda_stream));
    if (plan->skinny >= 0 && SkinnyGemmSupported(p)) return SkinnyGemm(p, stream, plan->skinny);
    RETURN_IF_ERROR(LtStatus(Matmul(*plan, plan->algo, p, cuda_stream), "matmul"));
    if (p.bias != nullptr && !bias_in_epilogue) {
      return AddBiasF32(static_cast<float*>(p.y), p.bias, p.m, p.n, stream);
    }
    return absl::OkStatus();
  }

  absl::Status RunSiluMul(const GemmSiluMulParams& p, void* stream) override {
    if (p.dtype != DType::kBF16) {
      return absl::InvalidArgumentError("cuda GEMM + SiLU takes bf16 x and w");
    }
    if (p.m < 0 || p.n <= 0 || p.k <= 0) return absl::InvalidArgumentError("GEMM: bad shape");
    if (p.m == 0) return absl::OkStatus();
    const GemmParams product = GatedProduct(p);
    ASSIGN_OR_RETURN(Plan * plan, PlanFor(product.m, product.n, product.k, DType::kBF16, false));
    if (!plan->tuned) RETURN_IF_ERROR(Tune(*plan, product, static_cast<cudaStream_t>(stream)));
    if (plan->skinny >= 0 && SkinnyGemmSupported(product)) {
      return SkinnyGemmSiluMul(p, stream, plan->skinny);
    }
    RETURN_IF_ERROR(Run(product, stream));
    return SiluMul(GatedActivation(p), stream);
  }

 private:
  cublasStatus_t Matmul(const Plan& plan, const cublasLtMatmulAlgo_t& algo, const GemmParams& p,
                        cudaStream_t stream) {
    const float one = 1.0f, zero = 0.0f;
    // Column-major view: y^T (n x m) = w (k x n)^T . x^T (k x m).
    return api_->cublasLtMatmul(handle_, plan.op, &one, p.w, plan.a, p.x, plan.b, &zero, p.y,
                                plan.d, p.y, plan.d, &algo, workspace_, kWorkspaceBytes, stream);
  }

  // Times every candidate on this call's operands (y is overwritten by the real run after)
  // and keeps the fastest. Skipped while the stream is being captured into a graph, where
  // nothing may synchronize; the shape is then tuned on its next uncaptured call.
  absl::Status Tune(Plan& plan, const GemmParams& p, cudaStream_t stream) {
    ASSIGN_OR_RETURN(const bool capturing, StreamIsCapturing(stream));
    if (capturing) return absl::OkStatus();
    plan.tuned = true;
    if (!TuningEnabled() || p.m > kMaxTunedRows ||
        (plan.candidates.size() < 2 && !SkinnyGemmSupported(p))) {
      return absl::OkStatus();
    }
    cudaEvent_t start = nullptr, stop = nullptr;
    if (cudaEventCreate(&start) != cudaSuccess || cudaEventCreate(&stop) != cudaSuccess) {
      if (start != nullptr) cudaEventDestroy(start);
      (void)cudaGetLastError();
      return absl::OkStatus();  // untimed: the heuristic's first choice
    }
    // Milliseconds of kTimedRuns calls of `run` after one warm-up call, or -1 when the
    // warm-up fails (the candidate cannot run this shape) or timing fails.
    auto time_runs = [&](auto run) -> float {
      if (!run()) return -1.0f;
      cudaEventRecord(start, stream);
      for (int i = 0; i < kTimedRuns; ++i) (void)run();
      cudaEventRecord(stop, stream);
      float ms = 0.0f;
      if (cudaEventSynchronize(stop) != cudaSuccess ||
          cudaEventElapsedTime(&ms, start, stop) != cudaSuccess) {
        return -1.0f;
      }
      return ms;
    };
    float best_ms = -1.0f;
    auto faster = [&](float ms) {
      if (ms < 0.0f || (best_ms >= 0.0f && ms >= best_ms)) return false;
      best_ms = ms;
      return true;
    };
    for (const cublasLtMatmulAlgo_t& algo : plan.candidates) {
      if (faster(
              time_runs([&] { return Matmul(plan, algo, p, stream) == CUBLAS_STATUS_SUCCESS; }))) {
        plan.algo = algo;
      }
    }
    for (int variant = 0; SkinnyGemmSupported(p) && variant < SkinnyGemmVariants(); ++variant) {
      if (faster(time_runs([&] { return SkinnyGemm(p, stream, variant).ok(); }))) {
        plan.skinny = variant;
      }
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    // Leave no error of a dropped candidate behind for the next checked call.
    (void)cudaGetLastError();
    return absl::OkStatus();
  }

  absl::StatusOr<Plan*> PlanFor(int64_t m, int64_t n, int64_t k, DType out, bool bias) {
    const auto key = std::make_tuple(m, n, k, out == DType::kF32, bias);
    if (auto it = plans_.find(key); it != plans_.end()) return &it->second;
    Plan plan;
    const cudaDataType_t d_type = out == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
    RETURN_IF_ERROR(
        LtStatus(api_->cublasLtMatmulDescCreate(&plan.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc"));
    const cublasOperation_t transpose = CUBLAS_OP_T, keep = CUBLAS_OP_N;
    RETURN_IF_ERROR(
        LtStatus(api_->cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_TRANSA,
                                                      &transpose, sizeof(transpose)),
                 "transa"));
    RETURN_IF_ERROR(LtStatus(api_->cublasLtMatmulDescSetAttribute(
                                 plan.op, CUBLASLT_MATMUL_DESC_TRANSB, &keep, sizeof(keep)),
                             "transb"));
    if (bias) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      RETURN_IF_ERROR(
          LtStatus(api_->cublasLtMatmulDescSetAttribute(plan.op, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                        &epilogue, sizeof(epilogue)),
                   "epilogue"));
    }
    RETURN_IF_ERROR(LtStatus(api_->cublasLtMatrixLayoutCreate(&plan.a, CUDA_R_16BF, k, n, k), "A"));
    RETURN_IF_ERROR(LtStatus(api_->cublasLtMatrixLayoutCreate(&plan.b, CUDA_R_16BF, k, m, k), "B"));
    RETURN_IF_ERROR(LtStatus(api_->cublasLtMatrixLayoutCreate(&plan.d, d_type, n, m, n), "D"));
    cublasLtMatmulPreference_t preference = nullptr;
    RETURN_IF_ERROR(LtStatus(api_->cublasLtMatmulPreferenceCreate(&preference), "preference"));
    const size_t workspace = kWorkspaceBytes;
    (void)api_->cublasLtMatmulPreferenceSetAttribute(
        preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(workspace));
    cublasLtMatmulHeuristicResult_t results[kCandidates]{};
    int found = 0;
    const cublasStatus_t heuristic = api_->cublasLtMatmulAlgoGetHeuristic(
        handle_, plan.op, plan.a, plan.b, plan.d, plan.d, preference, kCandidates, results, &found);
    api_->cublasLtMatmulPreferenceDestroy(preference);
    if (heuristic != CUBLAS_STATUS_SUCCESS || found == 0) {
      api_->cublasLtMatrixLayoutDestroy(plan.a);
      api_->cublasLtMatrixLayoutDestroy(plan.b);
      api_->cublasLtMatrixLayoutDestroy(plan.d);
      api_->cublasLtMatmulDescDestroy(plan.op);
      return absl::InternalError(
          absl::StrCat("cuBLASLt has no algorithm for GEMM m=", m, " n=", n, " k=", k));
    }
    for (int i = 0; i < found; ++i) {
      if (results[i].state == CUBLAS_STATUS_SUCCESS) plan.candidates.push_back(results[i].algo);
    }
    if (plan.candidates.empty()) plan.candidates.push_back(results[0].algo);
    plan.algo = plan.candidates.front();
    return &plans_.emplace(key, plan).first->second;
  }

  const CublasLtApi* api_ = nullptr;
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
