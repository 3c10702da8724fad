#include "kernels/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string_view>
#include <utility>
#include <variant>
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
#include "kernels/cuda/staging_arena.h"
#include "kernels/cuda/step_graphs.h"

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

// One event per mark, recorded on the backend's stream.
class EventMarks final : public QueueMarks {
 public:
  EventMarks(int count, cudaStream_t stream) : QueueMarks(count), stream_(stream) {}
  ~EventMarks() override {
    for (cudaEvent_t event : events_) (void)cudaEventDestroy(event);
  }
  absl::Status Init() {
    events_.resize(size(), nullptr);
    for (cudaEvent_t& event : events_) {
      RETURN_IF_ERROR(
          CudaStatus(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreate"));
    }
    return absl::OkStatus();
  }

 private:
  absl::Status PlaceOnQueue(int i) override {
    return CudaStatus(cudaEventRecord(events_[i], stream_), "cudaEventRecord");
  }
  void* native(int i) const override { return events_[i]; }

  cudaStream_t stream_;
  std::vector<cudaEvent_t> events_;
};

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device) : device_(device) {
    (void)cudaDeviceGetAttribute(&num_sms_, cudaDevAttrMultiProcessorCount, device);
  }
  ~CudaBackend() override {
    graphs_.Clear();
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
    if (read_back_ != nullptr) cudaFreeHost(read_back_);
  }
  // A stream of its own, since the legacy default stream cannot be captured into a graph;
  // a blocking one, so the synchronous copies of DeviceMemory() stay ordered with it.
  absl::Status Init() { return CudaStatus(cudaStreamCreate(&stream_), "cudaStreamCreate"); }

  std::string_view name() const override { return "cuda"; }
  absl::Status BindCallingThread() override {
    return CudaStatus(cudaSetDevice(device_), "cudaSetDevice");
  }
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
    // arena is reused (its errors surface at the next checked call).
    (void)cudaStreamSynchronize(stream_);
    staging_.Reset();
    tape_.clear();
    segment_ = 0;
    recording_ = false;
  }
  void BeginReplayableStep() override {
    BeginStep();
    recording_ = true;
  }
  absl::StatusOr<void*> Stage(const void* host, size_t bytes) override {
    return staging_.Stage(host, bytes, recording_, stream_);
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
  absl::Status Synchronize() override {
    RETURN_IF_ERROR(EndRecording());
    return SynchronizeStream(stream_);
  }
  absl::Status SynchronizeAndRead(void* dst, const void* src, size_t bytes) override {
    RETURN_IF_ERROR(EndRecording());
    if (bytes > read_back_bytes_) {
      if (read_back_ != nullptr) cudaFreeHost(read_back_);
      read_back_ = nullptr;
      read_back_bytes_ = 0;
      RETURN_IF_ERROR(CudaStatus(cudaMallocHost(&read_back_, bytes), "cudaMallocHost"));
      read_back_bytes_ = bytes;
    }
    RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(read_back_, src, bytes, cudaMemcpyDeviceToHost, stream_), "read-back"));
    RETURN_IF_ERROR(SynchronizeStream(stream_));
    std::memcpy(dst, read_back_, bytes);
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<QueueMarks>> NewQueueMarks(int count) override {
    // Marks sit between launches: a replayable step's ops run later, as graphs.
    if (recording_) return absl::FailedPreconditionError("no queue marks in a replayable step");
    auto marks = std::make_unique<EventMarks>(count, stream_);
    RETURN_IF_ERROR(marks->Init());
    return marks;
  }

  absl::Status Embedding(const EmbeddingParams& params) override { return Submit(params); }
  absl::Status RmsNorm(const RmsNormParams& params) override { return Submit(params); }
  absl::Status Rope(const RopeParams& params) override { return Submit(params); }
  absl::Status SiluMul(const SiluMulParams& params) override { return Submit(params); }
  absl::Status Gemm(const GemmParams& params) override { return Submit(params); }
  // LSERVE_FUSED_SILU=0 runs the product and the activation as two ops (for comparison).
  absl::Status GemmSiluMul(const GemmSiluMulParams& params) override {
    static const bool fused = [] {
      const char* value = std::getenv("LSERVE_FUSED_SILU");
      return value == nullptr || std::string_view(value) != "0";
    }();
    return fused ? Submit(params) : Backend::GemmSiluMul(params);
  }
  absl::Status AppendKv(const AppendKvParams& params) override { return Submit(params); }
  absl::Status RopeAppendKv(const RopeAppendKvParams& params) override { return Submit(params); }
  absl::Status PagedAttention(const PagedAttentionParams& params) override {
    return Submit(params);
  }
  absl::Status ScorePages(const ScorePagesParams& params) override { return Submit(params); }
  absl::Status SelectPages(const SelectPagesParams& params) override { return Submit(params); }
  absl::Status Sample(const SampleParams& params) override { return Submit(params); }
  ReplayCounters replay_counters() const override { return graphs_.counters(); }

 private:
  // Runs what a replayable step recorded last; staged arrays reach the device even when
  // no op followed them.
  absl::Status EndRecording() {
    if (!recording_) return absl::OkStatus();
    recording_ = false;
    return tape_.empty() ? staging_.Upload(stream_) : RunSegment();
  }
  // Records the op in a replayable step, running each full segment, else launches it.
  absl::Status Submit(RecordedOp op) {
    if (!recording_) return Launch(op);
    tape_.push_back(std::move(op));
    const size_t ops = segment_ == 0 ? kFirstSegmentOps : kSegmentOps;
    return tape_.size() < ops ? absl::OkStatus() : RunSegment();
  }
  absl::Status RunSegment() {
    if (staging_.generation() != staging_generation_) {
      graphs_.Clear();
      staging_generation_ = staging_.generation();
    }
    RETURN_IF_ERROR(staging_.Upload(stream_));
    StepTape tape = std::move(tape_);
    tape_.clear();
    return graphs_.Run(segment_++, std::move(tape), stream_,
                       [this](const RecordedOp& op) { return Launch(op); });
  }
  absl::Status Launch(const RecordedOp& op) {
    return std::visit([this](const auto& params) { return LaunchOp(params); }, op);
  }
  absl::Status LaunchOp(const EmbeddingParams& p) { return cuda::Embedding(p, stream_); }
  absl::Status LaunchOp(const RmsNormParams& p) { return cuda::RmsNorm(p, stream_); }
  absl::Status LaunchOp(const RopeParams& p) { return ApplyRope(p, stream_); }
  absl::Status LaunchOp(const SiluMulParams& p) { return cuda::SiluMul(p, stream_); }
  absl::Status LaunchOp(const GemmParams& p) {
    if (gemm_ == nullptr) {
      ASSIGN_OR_RETURN(gemm_, GemmRunner::Create());
    }
    return gemm_->Run(p, stream_);
  }
  absl::Status LaunchOp(const GemmSiluMulParams& p) {
    if (gemm_ == nullptr) {
      ASSIGN_OR_RETURN(gemm_, GemmRunner::Create());
    }
    return gemm_->RunSiluMul(p, stream_);
  }
  absl::Status LaunchOp(const AppendKvParams& p) { return cuda::AppendKv(p, stream_); }
  absl::Status LaunchOp(const RopeAppendKvParams& p) { return cuda::RopeAppendKv(p, stream_); }
  absl::Status LaunchOp(const PagedAttentionParams& params) {
    // Decode rows first (they may read selected pages), then the prefill chunks.
    PagedAttentionParams single_rows, rest;
    if (SplitAtSingleRowPrefix(params, &single_rows, &rest)) {
      RETURN_IF_ERROR(LaunchOp(single_rows));
      return LaunchOp(rest);
    }
    if (params.tables.max_queries > 1) {
      if (prefill_workspace_.bytes() == 0) {
        RETURN_IF_ERROR(RefuseUnderCapture("the prefill workspace"));
        ASSIGN_OR_RETURN(prefill_workspace_, Buffer::Allocate(memory(), kPrefillWorkspaceBytes));
      }
      return PagedPrefillAttention(params, prefill_workspace_.data(), num_sms_, stream_);
    }
    const DecodeLaunch launch = PlanDecode(params, num_sms_);
    if (workspace_.bytes() < launch.workspace_bytes) {
      RETURN_IF_ERROR(RefuseUnderCapture("the decode workspace"));
      // The previous step may still read the old workspace, and graphs name it.
      RETURN_IF_ERROR(SynchronizeStream(stream_));
      graphs_.Clear();
      workspace_ = Buffer();
      ASSIGN_OR_RETURN(workspace_, Buffer::Allocate(memory(), launch.workspace_bytes));
    }
    return PagedDecodeAttention(params, launch, workspace_.data(), stream_);
  }
  absl::Status LaunchOp(const ScorePagesParams& p) { return cuda::ScorePages(p, stream_); }
  absl::Status LaunchOp(const SelectPagesParams& p) { return cuda::SelectPages(p, stream_); }
  absl::Status LaunchOp(const SampleParams& p) { return cuda::Sample(p, stream_); }
  // Buffers cannot grow while a graph is captured (that would synchronize): the capture
  // is abandoned and the step runs op by op.
  absl::Status RefuseUnderCapture(const char* what) {
    ASSIGN_OR_RETURN(const bool capturing, StreamIsCapturing(stream_));
    if (!capturing) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(what, " must grow outside a capture"));
  }

  cudaStream_t stream_ = nullptr;
  int device_ = 0;
  int num_sms_ = 132;
  Buffer workspace_;          // split-K partial results of decode attention
  Buffer prefill_workspace_;  // the prefill kernel's work counters
  std::unique_ptr<GemmRunner> gemm_;
  StagingArena staging_{DeviceMemory()};
  // Ops per segment of a replayable step: four layers of a Llama decode step.
  static constexpr size_t kSegmentOps = 36;
  // The first segment is about one layer, so the device starts while the host records on.
  static constexpr size_t kFirstSegmentOps = 10;
  bool recording_ = false;  // in a replayable step: ops go to tape_
  StepTape tape_;           // the segment being recorded
  int segment_ = 0;
  StepGraphCache graphs_;
  int64_t staging_generation_ = 0;
  void* read_back_ = nullptr;  // pinned host memory of SynchronizeAndRead
  size_t read_back_bytes_ = 0;
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
  auto backend = std::make_unique<CudaBackend>(device);
  RETURN_IF_ERROR(backend->Init());
  return std::unique_ptr<Backend>(std::move(backend));
}

}  // namespace lserve::cuda
