#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/norm_activation.h"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/sampling.h"

namespace lserve::cuda {
namespace {

using internal::CudaStatus;

class DeviceMemorySpace final : public MemorySpace {
 public:
  std::string_view name() const override { return "cuda device"; }
  bool host_accessible() const override { return false; }
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    void* ptr = nullptr;
    RETURN_IF_ERROR(CudaStatus(cudaMalloc(&ptr, bytes), absl::StrCat("cudaMalloc(", bytes, ")")));
    if (absl::Status s = CudaStatus(cudaMemset(ptr, 0, bytes), "cudaMemset"); !s.ok()) {
      cudaFree(ptr);
      return s;
    }
    return ptr;
  }
  void Free(void* ptr) override { cudaFree(ptr); }
  absl::Status CopyToHost(void* dst, const void* src, size_t bytes) override {
    return CudaStatus(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  }
  absl::Status CopyFromHost(void* dst, const void* src, size_t bytes) override {
    return CudaStatus(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  absl::Status Copy(void* dst, const void* src, size_t bytes) override {
    return CudaStatus(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy D2D");
  }
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) {
    (void)cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device);
  }
  std::string_view name() const override { return "cuda"; }
  DType compute_dtype() const override { return DType::kBF16; }
  MemorySpace* memory() override { return DeviceMemory(); }
  absl::Status CheckEngineSupport() const override { return absl::OkStatus(); }
  absl::Status CheckAttentionHeads(int num_q_heads, int num_kv_heads, int head_dim) const override {
    if (head_dim != 64 && head_dim != 128) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the cuda backend's attention kernels serve head_dim 64 and 128; this model has "
          "head_dim ",
          head_dim, ": use --backend=cpu, which serves any head dim"));
    }
    // Decode attention packs a GQA group into one tile of at most 8 query heads.
    if (num_kv_heads <= 0 || num_q_heads % num_kv_heads != 0 || num_q_heads / num_kv_heads > 8) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the cuda backend's attention kernels serve GQA groups of 1 to 8 query heads per KV "
          "head; this model has ",
          num_q_heads, " query heads over ", num_kv_heads,
          " KV heads: use --backend=cpu, which serves any grouping"));
    }
    return absl::OkStatus();
  }
  absl::StatusOr<BackendMemoryInfo> QueryMemory() const override {
    size_t free_bytes = 0, total_bytes = 0;
    RETURN_IF_ERROR(CudaStatus(cudaMemGetInfo(&free_bytes, &total_bytes), "cudaMemGetInfo"));
    return BackendMemoryInfo{static_cast<int64_t>(free_bytes), static_cast<int64_t>(total_bytes)};
  }

  void BeginStep() override {
    // The previous step's work may still read its staged arrays: wait for it before the
    // arenas are reused (its errors surface at the next checked call).
    (void)cudaStreamSynchronize(stream_);
    retired_.clear();
    staged_ = 0;
  }
  absl::StatusOr<void*> Stage(const void* host, size_t bytes) override {
    const size_t aligned = (bytes + 255) / 256 * 256;
    if (staged_ + aligned > staging_.bytes()) {
      // Grow for the rest of the step; earlier pointers of this step stay valid because
      // the old arena is kept until the next BeginStep.
      ASSIGN_OR_RETURN(Buffer bigger,
                       Buffer::Allocate(memory(), std::max<size_t>(2 * staging_.bytes(),
                                                                   staged_ + aligned + (1 << 20))));
      retired_.push_back(std::move(staging_));
      staging_ = std::move(bigger);
      staged_ = 0;
    }
    void* dst = static_cast<uint8_t*>(staging_.data()) + staged_;
    RETURN_IF_ERROR(CudaStatus(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, stream_),
                               "staging copy"));
    staged_ += aligned;
    return dst;
  }
  absl::StatusOr<BackendTensor> UploadWeights(const float* host, int64_t elements) override {
    ASSIGN_OR_RETURN(Buffer staging, Buffer::Allocate(memory(), elements * sizeof(float)));
    RETURN_IF_ERROR(memory()->CopyFromHost(staging.data(), host, elements * sizeof(float)));
    BackendTensor tensor;
    ASSIGN_OR_RETURN(tensor.storage, Buffer::Allocate(memory(), elements * sizeof(uint16_t)));
    RETURN_IF_ERROR(
        F32ToBf16(staging.as<float>(), tensor.storage.as<uint16_t>(), elements, stream_));
    RETURN_IF_ERROR(SynchronizeStream(stream_));
    tensor.data = tensor.storage.data();
    tensor.dtype = DType::kBF16;
    return tensor;
  }
  absl::Status Synchronize() override { return SynchronizeStream(stream_); }

  absl::Status Embedding(const EmbeddingParams& params) override {
    return cuda::Embedding(params, stream_);
  }
  absl::Status RmsNorm(const RmsNormParams& params) override {
    return cuda::RmsNorm(params, stream_);
  }
  absl::Status Rope(const RopeParams& params) override { return ApplyRope(params, stream_); }
  absl::Status SiluMul(const SiluMulParams& params) override {
    return cuda::SiluMul(params, stream_);
  }
  absl::Status Gemm(const GemmParams& params) override {
    if (gemm_ == nullptr) {
      ASSIGN_OR_RETURN(gemm_, GemmRunner::Create());
    }
    return gemm_->Run(params, stream_);
  }
  absl::Status AppendKv(const AppendKvParams& params) override {
    return cuda::AppendKv(params, stream_);
  }
  absl::Status RopeAppendKv(const RopeAppendKvParams& params) override {
    return cuda::RopeAppendKv(params, stream_);
  }
  absl::Status PagedAttention(const PagedAttentionParams& params) override {
    // Decode rows first (they may read selected pages), then the prefill chunks.
    PagedAttentionParams single_rows, rest;
    if (SplitAtSingleRowPrefix(params, &single_rows, &rest)) {
      RETURN_IF_ERROR(PagedAttention(single_rows));
      return PagedAttention(rest);
    }
    if (params.tables.max_queries > 1) {
      if (prefill_workspace_.bytes() == 0) {
        ASSIGN_OR_RETURN(prefill_workspace_, Buffer::Allocate(memory(), kPrefillWorkspaceBytes));
      }
      return PagedPrefillAttention(params, prefill_workspace_.data(), num_sms_, stream_);
    }
    const DecodeLaunch launch = PlanDecode(params, num_sms_);
    if (workspace_.bytes() < launch.workspace_bytes) {
      // The previous step may still read the old workspace.
      RETURN_IF_ERROR(SynchronizeStream(stream_));
      workspace_ = Buffer();
      ASSIGN_OR_RETURN(workspace_, Buffer::Allocate(memory(), launch.workspace_bytes));
    }
    return PagedDecodeAttention(params, launch, workspace_.data(), stream_);
  }
  absl::Status ScorePages(const ScorePagesParams& params) override {
    return cuda::ScorePages(params, stream_);
  }
  absl::Status SelectPages(const SelectPagesParams& params) override {
    return cuda::SelectPages(params, stream_);
  }
  absl::Status Sample(const SampleParams& params) override { return cuda::Sample(params, stream_); }

 private:
  cudaStream_t stream_ = nullptr;  // the legacy default stream
  int num_sms_ = 132;
  Buffer workspace_;          // split-K partial results of decode attention
  Buffer prefill_workspace_;  // the prefill kernel's work counters
  std::unique_ptr<GemmRunner> gemm_;
  Buffer staging_;
  size_t staged_ = 0;
  std::vector<Buffer> retired_;
};

}  // namespace

MemorySpace* DeviceMemory() {
  static DeviceMemorySpace* space = new DeviceMemorySpace();
  return space;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device) {
  const int count = DeviceCount();
  if (device < 0 || device >= count) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cuda backend: device ", device, " is not usable (", count, " devices visible)"));
  }
  RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), "cudaSetDevice"));
  return std::unique_ptr<Backend>(new CudaBackend(device));
}

}  // namespace lserve::cuda
