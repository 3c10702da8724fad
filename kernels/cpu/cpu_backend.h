// The CPU backend: float32 kernels on a thread pool, everything in host memory. It is the
// oracle every other backend is checked against.
#ifndef LSERVE_KERNELS_CPU_CPU_BACKEND_H_
#define LSERVE_KERNELS_CPU_CPU_BACKEND_H_

#include <memory>

#include "common/thread_pool.h"
#include "kernels/backend.h"

namespace lserve {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int num_threads) : pool_(std::make_unique<ThreadPool>(num_threads)) {}

  std::string_view name() const override { return "cpu"; }
  DType compute_dtype() const override { return DType::kF32; }
  MemorySpace* memory() override { return HostMemory(); }
  absl::Status CheckEngineSupport() const override { return absl::OkStatus(); }

  void BeginStep() override {}
  absl::StatusOr<void*> Stage(const void* host, size_t bytes) override {
    return const_cast<void*>(host);  // host memory is backend memory here
  }
  absl::StatusOr<BackendTensor> UploadWeights(const float* host, int64_t elements) override;
  absl::Status Synchronize() override { return absl::OkStatus(); }

  absl::Status Embedding(const EmbeddingParams& params) override;
  absl::Status RmsNorm(const RmsNormParams& params) override;
  absl::Status Rope(const RopeParams& params) override;
  absl::Status SiluMul(const SiluMulParams& params) override;
  absl::Status Gemm(const GemmParams& params) override;
  absl::Status AppendKv(const AppendKvParams& params) override;
  absl::Status PagedAttention(const PagedAttentionParams& params) override;
  absl::Status ScorePages(const ScorePagesParams& params) override;
  absl::Status SelectPages(const SelectPagesParams& params) override;
  absl::Status Sample(const SampleParams& params) override;

  ThreadPool* pool() { return pool_.get(); }

 private:
  std::unique_ptr<ThreadPool> pool_;
};

}  // namespace lserve

#endif  // LSERVE_KERNELS_CPU_CPU_BACKEND_H_
