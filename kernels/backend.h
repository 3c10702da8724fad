// The one seam between the engine and a compute backend (cpu, cuda). Every op takes a
// Params struct shared by all backends and returns absl::Status; pointers in Params are
// backend memory (memory()), host memory for the CPU backend. Backends are created by
// name in backend_registry.h. No CUDA types here.
#ifndef LSERVE_KERNELS_BACKEND_H_
#define LSERVE_KERNELS_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/memory_space.h"
#include "kernels/attention_params.h"
#include "kernels/dtype.h"
#include "kernels/layer_params.h"
#include "kernels/queue_marks.h"
#include "kernels/sampling_params.h"

namespace lserve {

// A tensor in backend memory; `storage` is empty when `data` aliases caller memory.
struct BackendTensor {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  Buffer storage;
};

// Memory of a backend's device as its driver reports it; the engine sizes device KV pools
// from it.
struct BackendMemoryInfo {
  int64_t free_bytes = 0;
  int64_t total_bytes = 0;
};

// Segments of replayable steps (a few layers' ops each), by how they ran.
struct ReplayCounters {
  int64_t eager = 0;             // op by op
  int64_t captured = 0;          // captured into a graph, then launched
  int64_t replayed = 0;          // a cached graph launched
  int64_t capture_failures = 0;  // captures abandoned; those segments ran op by op
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view name() const = 0;
  // Element type of activations, weights and KV pools on this backend.
  virtual DType compute_dtype() const = 0;
  // Where activations, weights and KV pools live.
  virtual MemorySpace* memory() = 0;
  // OK when every op the engine uses is implemented; else UNIMPLEMENTED naming the gaps.
  virtual absl::Status CheckEngineSupport() const = 0;
  // OK when this backend's attention serves the model's head geometry; else an error
  // that says which backend does.
  virtual absl::Status CheckAttentionHeads(int /*num_q_heads*/, int /*num_kv_heads*/,
                                           int /*head_dim*/) const {
    return absl::OkStatus();
  }
  // Free and total bytes of memory(); UNIMPLEMENTED for host memory, which the engine
  // sizes by bytes instead.
  virtual absl::StatusOr<BackendMemoryInfo> QueryMemory() const {
    return absl::UnimplementedError("this backend's memory is not sized from free memory");
  }

  // Makes the calling thread use this backend's device (a GPU backend on another device
  // than the thread's current one); engine threads call it before their first step.
  virtual absl::Status BindCallingThread() { return absl::OkStatus(); }

  // Per-step staging of small host arrays (positions, page tables): the returned pointer
  // is backend memory valid until the next BeginStep.
  virtual void BeginStep() = 0;
  // BeginStep for a step whose ops may be recorded and replayed as one unit (a CUDA graph
  // on GPUs) until Synchronize, which runs them: every op's params must describe its
  // launch fully, host arrays reaching ops only through Stage, and backend memory they
  // reference must stay allocated until Synchronize. An op's errors may surface there.
  virtual void BeginReplayableStep() { BeginStep(); }
  virtual absl::StatusOr<void*> Stage(const void* host, size_t bytes) = 0;
  // Float32 host weights in the backend's compute dtype (the CPU backend aliases them).
  virtual absl::StatusOr<BackendTensor> UploadWeights(const float* host, int64_t elements) = 0;
  // Waits for queued work and reports asynchronous errors.
  virtual absl::Status Synchronize() = 0;
  // Synchronize, then `bytes` of backend memory at `src` into host memory at `dst`: what a
  // step reads back at its end (a device backend queues the copy behind the step's work,
  // so the host waits once).
  virtual absl::Status SynchronizeAndRead(void* dst, const void* src, size_t bytes) {
    if (absl::Status status = Synchronize(); !status.ok()) return status;
    return memory()->CopyToHost(dst, src, bytes);
  }
  // Marks for the layers of a step (QueueMarks); the default suits a backend whose ops
  // have finished when they return.
  virtual absl::StatusOr<std::unique_ptr<QueueMarks>> NewQueueMarks(int count) {
    return std::make_unique<QueueMarks>(count);
  }

  virtual absl::Status Embedding(const EmbeddingParams& params) = 0;
  virtual absl::Status RmsNorm(const RmsNormParams& params) = 0;
  virtual absl::Status Rope(const RopeParams& params) = 0;
  virtual absl::Status SiluMul(const SiluMulParams& params) = 0;
  virtual absl::Status Gemm(const GemmParams& params) = 0;
  // Gemm into params.scratch, then SiluMul, unless the backend fuses them.
  virtual absl::Status GemmSiluMul(const GemmSiluMulParams& params) {
    if (absl::Status status = Gemm(GatedProduct(params)); !status.ok()) return status;
    return SiluMul(GatedActivation(params));
  }
  virtual absl::Status AppendKv(const AppendKvParams& params) = 0;
  // RoPE of the step's q rows in place, and of its k rows on their way into the pools
  // (params.append.k must be params.k_rope.x; what that buffer holds afterwards is
  // unspecified), with the append's page statistics: Rope, Rope and AppendKv one after
  // another unless the backend fuses them.
  virtual absl::Status RopeAppendKv(const RopeAppendKvParams& params) {
    if (params.append.k != params.k_rope.x) {
      return absl::InvalidArgumentError("RopeAppendKv: append.k must be k_rope.x");
    }
    if (absl::Status status = Rope(params.q_rope); !status.ok()) return status;
    if (absl::Status status = Rope(params.k_rope); !status.ok()) return status;
    return AppendKv(params.append);
  }
  virtual absl::Status PagedAttention(const PagedAttentionParams& params) = 0;
  virtual absl::Status ScorePages(const ScorePagesParams& params) = 0;
  virtual absl::Status SelectPages(const SelectPagesParams& params) = 0;
  virtual absl::Status Sample(const SampleParams& params) = 0;

  // How the segments of replayable steps ran.
  virtual ReplayCounters replay_counters() const { return {}; }
};

// Stages a host vector for the current step; null for an empty vector.
template <typename T>
absl::StatusOr<const T*> StageVector(Backend* backend, const std::vector<T>& host) {
  if (host.empty()) return static_cast<const T*>(nullptr);
  absl::StatusOr<void*> staged = backend->Stage(host.data(), host.size() * sizeof(T));
  if (!staged.ok()) return staged.status();
  return static_cast<const T*>(*staged);
}

}  // namespace lserve

#endif  // LSERVE_KERNELS_BACKEND_H_
