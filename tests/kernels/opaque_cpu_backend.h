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
// over slices of the batch, as the CUDA backend runs decode rows and prefill chunks. With
// CheckEarlyLoadOrder(), it also holds callers to the op order that the early-load hints
// promise (a device backend would read stale data otherwise): attention marked
// selection_settled and scoring marked after_append must come right after a KV append,
// a RoPE + KV append marked inputs_settled right after a GEMM, and top-k marked
// after_scoring right after scoring, or first, else the op fails with FAILED_PRECONDITION.
class OpaqueCpuBackend final : public Backend {
 public:
  explicit OpaqueCpuBackend(Backend* cpu, bool split_rows = false)
      : cpu_(cpu), split_rows_(split_rows) {}
  int split_launches() const { return split_launches_; }
  // Callers must feed every op of the stream through this backend.
  void CheckEarlyLoadOrder() { check_order_ = true; }
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
  absl::Status Embedding(const EmbeddingParams& p) override {
    return Op(kOther, cpu_->Embedding(p));
  }
  absl::Status RmsNorm(const RmsNormParams& p) override { return Op(kOther, cpu_->RmsNorm(p)); }
  absl::Status Rope(const RopeParams& p) override { return Op(kOther, cpu_->Rope(p)); }
  absl::Status SiluMul(const SiluMulParams& p) override { return Op(kOther, cpu_->SiluMul(p)); }
  absl::Status Gemm(const GemmParams& p) override { return Op(kGemm, cpu_->Gemm(p)); }
  absl::Status AppendKv(const AppendKvParams& p) override { return Op(kAppend, cpu_->AppendKv(p)); }
  // Through this backend's Rope and AppendKv (Backend's composition), after the check.
  absl::Status RopeAppendKv(const RopeAppendKvParams& p) override {
    if (check_order_ && p.inputs_settled && ran_op_ && last_op_ != kGemm) {
      return absl::FailedPreconditionError(
          "RoPE + KV append marked inputs_settled not after a GEMM");
    }
    return Backend::RopeAppendKv(p);
  }
  absl::Status PagedAttention(const PagedAttentionParams& p) override {
    if (check_order_ && p.selection_settled && ran_op_ && last_op_ != kAppend) {
      return absl::FailedPreconditionError(
          "attention marked selection_settled not after an append");
    }
    last_op_ = kOther;
    ran_op_ = true;
    PagedAttentionParams single_rows, rest;
    if (!split_rows_ || !SplitAtSingleRowPrefix(p, &single_rows, &rest)) {
      return cpu_->PagedAttention(p);
    }
    ++split_launches_;
    RETURN_IF_ERROR(cpu_->PagedAttention(single_rows));
    return cpu_->PagedAttention(rest);
  }
  absl::Status ScorePages(const ScorePagesParams& p) override {
    if (check_order_ && p.after_append && ran_op_ && last_op_ != kAppend) {
      return absl::FailedPreconditionError("scoring marked after_append not after an append");
    }
    return Op(kScore, cpu_->ScorePages(p));
  }
  absl::Status SelectPages(const SelectPagesParams& p) override {
    if (check_order_ && p.after_scoring && ran_op_ && last_op_ != kScore) {
      return absl::FailedPreconditionError("top-k marked after_scoring not after scoring");
    }
    return Op(kOther, cpu_->SelectPages(p));
  }
  absl::Status Sample(const SampleParams& p) override { return Op(kOther, cpu_->Sample(p)); }

 private:
  enum OpKind { kOther, kAppend, kGemm, kScore };

  // Notes what the op just run was, and passes its status on.
  absl::Status Op(OpKind kind, absl::Status status) {
    last_op_ = kind;
    ran_op_ = true;
    return status;
  }

  Backend* cpu_;
  bool split_rows_;
  int split_launches_ = 0;
  bool check_order_ = false;
  bool ran_op_ = false;  // any op yet
  OpKind last_op_ = kOther;
  OpaqueHostMemory memory_;
};

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_KERNELS_OPAQUE_CPU_BACKEND_H_
