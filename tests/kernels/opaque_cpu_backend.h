// A CPU backend that behaves like a device backend to its callers: its memory claims not
// to be host-visible and it copies weights into that memory, so code that takes the device
// path (HybridAttention's device-side selections, the engine's joined GEMM weights and
// strided q/k/v rows) runs, and is checked, on the CPU.
#ifndef LSERVE_TESTS_KERNELS_OPAQUE_CPU_BACKEND_H_
#define LSERVE_TESTS_KERNELS_OPAQUE_CPU_BACKEND_H_

#include <string_view>

#include "common/memory_space.h"
#include "common/status_macros.h"
#include "kernels/backend.h"

namespace lserve::testing {

// Host memory that claims not to be host-visible, so HybridAttention takes the path it
// takes on a GPU (selections made and kept in backend memory, never read by the host).
class OpaqueHostMemory final : public MemorySpace {
 public:
  std::string_view name() const override { return "opaque host"; }
  bool host_accessible() const override { return false; }
  absl::StatusOr<void*> Allocate(size_t bytes) override { return HostMemory()->Allocate(bytes); }
  void Free(void* ptr) override { HostMemory()->Free(ptr); }
  absl::Status CopyToHost(void* dst, const void* src, size_t bytes) override {
    return HostMemory()->CopyToHost(dst, src, bytes);
  }
  absl::Status CopyFromHost(void* dst, const void* src, size_t bytes) override {
    return HostMemory()->CopyFromHost(dst, src, bytes);
  }
  absl::Status Copy(void* dst, const void* src, size_t bytes) override {
    return HostMemory()->Copy(dst, src, bytes);
  }
};

// The CPU backend behind OpaqueHostMemory. With split_rows, attention over a batch whose
// leading single-row sequences are marked (tables.single_row_prefix) runs as two launches
// over slices of the batch, as the CUDA backend runs decode rows and prefill chunks.
class OpaqueCpuBackend final : public Backend {
 public:
  explicit OpaqueCpuBackend(Backend* cpu, bool split_rows = false)
      : cpu_(cpu), split_rows_(split_rows) {}
  int split_launches() const { return split_launches_; }
  std::string_view name() const override { return "opaque cpu"; }
  DType compute_dtype() const override { return cpu_->compute_dtype(); }
  MemorySpace* memory() override { return &memory_; }
  absl::Status CheckEngineSupport() const override { return cpu_->CheckEngineSupport(); }
  void BeginStep() override { cpu_->BeginStep(); }
  absl::StatusOr<void*> Stage(const void* host, size_t bytes) override {
    return cpu_->Stage(host, bytes);
  }
  // Weights are copied into this backend's memory, as a device backend copies them.
  absl::StatusOr<BackendTensor> UploadWeights(const float* host, int64_t elements) override {
    BackendTensor tensor;
    ASSIGN_OR_RETURN(tensor.storage, Buffer::Allocate(&memory_, elements * sizeof(float)));
    RETURN_IF_ERROR(memory_.CopyFromHost(tensor.storage.data(), host, elements * sizeof(float)));
    tensor.data = tensor.storage.data();
    tensor.dtype = DType::kF32;
    return tensor;
  }
  absl::Status Synchronize() override { return cpu_->Synchronize(); }
  absl::Status Embedding(const EmbeddingParams& p) override { return cpu_->Embedding(p); }
  absl::Status RmsNorm(const RmsNormParams& p) override { return cpu_->RmsNorm(p); }
  absl::Status Rope(const RopeParams& p) override { return cpu_->Rope(p); }
  absl::Status SiluMul(const SiluMulParams& p) override { return cpu_->SiluMul(p); }
  absl::Status Gemm(const GemmParams& p) override { return cpu_->Gemm(p); }
  absl::Status AppendKv(const AppendKvParams& p) override { return cpu_->AppendKv(p); }
  absl::Status PagedAttention(const PagedAttentionParams& p) override {
    PagedAttentionParams single_rows, rest;
    if (!split_rows_ || !SplitAtSingleRowPrefix(p, &single_rows, &rest)) {
      return cpu_->PagedAttention(p);
    }
    ++split_launches_;
    RETURN_IF_ERROR(cpu_->PagedAttention(single_rows));
    return cpu_->PagedAttention(rest);
  }
  absl::Status ScorePages(const ScorePagesParams& p) override { return cpu_->ScorePages(p); }
  absl::Status SelectPages(const SelectPagesParams& p) override { return cpu_->SelectPages(p); }
  absl::Status Sample(const SampleParams& p) override { return cpu_->Sample(p); }

 private:
  Backend* cpu_;
  bool split_rows_;
  int split_launches_ = 0;
  OpaqueHostMemory memory_;
};

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_KERNELS_OPAQUE_CPU_BACKEND_H_
