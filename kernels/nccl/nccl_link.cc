#include "kernels/nccl/nccl_link.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/nccl/copy_ranges.h"
#include "kernels/nccl/staging_plan.h"

namespace lserve::nccl {
namespace {

constexpr auto kPollInterval = std::chrono::microseconds(20);
constexpr size_t kGroupBytes = size_t{1} << 30;
// A group ends between layers once it holds this much, so a sender whose layers are
// still being computed sends each part as soon as it is written.
constexpr size_t kMinLayerGroupBytes = size_t{64} << 20;
// Ranges averaging less than this go through the staging buffer: NCCL costs about 7 us
// per send/recv pair, so 256 KiB pages one by one run at a tenth of the link's speed.
constexpr size_t kStageBelowBytes = size_t{8} << 20;
// Two staging buffers: one chunk travels while the next is gathered (or the last one
// scattered) on the copy stream.
constexpr size_t kStagingBytes = size_t{128} << 20;
constexpr int kStagingBuffers = 2;

absl::Status CudaError(cudaError_t error, absl::string_view what) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(error)));
}

absl::Status NcclError(ncclResult_t result, ncclComm_t comm, absl::string_view what) {
  if (result == ncclSuccess) return absl::OkStatus();
  const char* detail = ncclGetLastError(comm);
  const std::string message =
      absl::StrCat(what, ": ", ncclGetErrorString(result), detail != nullptr && *detail ? " (" : "",
                   detail != nullptr ? detail : "", detail != nullptr && *detail ? ")" : "");
  switch (result) {
    case ncclInvalidArgument:
    case ncclInvalidUsage:
      return absl::InvalidArgumentError(message);
    case ncclSystemError:
    case ncclRemoteError:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

int64_t FreeDeviceBytes() {
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
  return static_cast<int64_t>(free);
}

}  // namespace

struct NcclLink::Impl {
  mutable std::mutex mu;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int rank = 0;
  int device = 0;
  bool broken = false;
  int64_t device_bytes = 0;
  // Scattered ranges: kStagingBuffers buffers of kStagingBytes, the stream that gathers
  // into them or scatters out of them, and per buffer an event after its copy (staged)
  // and after its send or receive (moved).
  void* staging[kStagingBuffers] = {};
  cudaStream_t copy_stream = nullptr;
  cudaEvent_t staged[kStagingBuffers] = {};
  cudaEvent_t moved[kStagingBuffers] = {};
  RangeCopy* descriptors = nullptr;
  size_t descriptor_capacity = 0;

  absl::Status EnsureStaging() {
    if (copy_stream != nullptr) return absl::OkStatus();
    // What an earlier failed attempt made stays (the destructor frees it).
    for (int b = 0; b < kStagingBuffers; ++b) {
      if (staging[b] == nullptr) {
        RETURN_IF_ERROR(CudaError(cudaMalloc(&staging[b], kStagingBytes), "staging buffer"));
      }
      if (staged[b] == nullptr) {
        RETURN_IF_ERROR(CudaError(cudaEventCreateWithFlags(&staged[b], cudaEventDisableTiming),
                                  "cudaEventCreate"));
      }
      if (moved[b] == nullptr) {
        RETURN_IF_ERROR(CudaError(cudaEventCreateWithFlags(&moved[b], cudaEventDisableTiming),
                                  "cudaEventCreate"));
      }
    }
    int lowest = 0, highest = 0;
    (void)cudaDeviceGetStreamPriorityRange(&lowest, &highest);
    return CudaError(cudaStreamCreateWithPriority(&copy_stream, cudaStreamNonBlocking, highest),
                     "cudaStreamCreate");
  }

  void AbortLocked(absl::string_view why) {
    if (broken) return;
    broken = true;
    LOG(Warning) << "NCCL link (rank " << rank << ", device " << device << ") aborted: " << why;
    (void)cudaSetDevice(device);
    (void)ncclCommAbort(comm);
    // Aborted kernels exit; once the stream is idle no NCCL kernel touches the buffers,
    // which their owners may then free.
    if (stream != nullptr) (void)cudaStreamSynchronize(stream);
    if (copy_stream != nullptr) (void)cudaStreamSynchronize(copy_stream);
  }

  // Polls the communicator until its queued calls are done (non-blocking mode), with the
  // lock held only while polling.
  absl::Status WaitReady(Deadline deadline, absl::string_view what,
                         const std::atomic<bool>* cancelled = nullptr) {
    while (true) {
      std::unique_lock<std::mutex> lock(mu);
      if (broken) return absl::UnavailableError(absl::StrCat(what, ": the link was aborted"));
      ncclResult_t state = ncclSuccess;
      const ncclResult_t polled = ncclCommGetAsyncError(comm, &state);
      if (polled != ncclSuccess) state = polled;
      if (state == ncclSuccess) return absl::OkStatus();
      if (state != ncclInProgress) {
        absl::Status error = NcclError(state, comm, what);
        AbortLocked(error.message());
        return error;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        AbortLocked(absl::StrCat(what, ": timed out"));
        return absl::DeadlineExceededError(absl::StrCat(what, ": timed out"));
      }
      if (cancelled != nullptr && cancelled->load()) {
        AbortLocked(absl::StrCat(what, ": given up"));
        return absl::CancelledError(absl::StrCat(what, ": given up"));
      }
      lock.unlock();
      std::this_thread::sleep_for(kPollInterval);
    }
  }
};

namespace {

// Polls until `event` has passed (no lock held while sleeping), watching the link for
// errors; at the deadline the link aborts.
absl::Status PollEvent(NcclLink::Impl& impl, cudaEvent_t event, Deadline deadline,
                       absl::string_view what) {
  while (true) {
    {
      std::lock_guard<std::mutex> lock(impl.mu);
      if (impl.broken) return absl::UnavailableError("the NCCL link was aborted");
      (void)cudaSetDevice(impl.device);
      const cudaError_t query = cudaEventQuery(event);
      if (query == cudaSuccess) return absl::OkStatus();
      if (query != cudaErrorNotReady) {
        absl::Status error = CudaError(query, what);
        impl.AbortLocked(error.message());
        return error;
      }
      ncclResult_t state = ncclSuccess;
      (void)ncclCommGetAsyncError(impl.comm, &state);
      if (state != ncclSuccess && state != ncclInProgress) {
        absl::Status error = NcclError(state, impl.comm, what);
        impl.AbortLocked(error.message());
        return error;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        impl.AbortLocked(absl::StrCat(what, " timed out"));
        return absl::DeadlineExceededError(absl::StrCat(what, " timed out: is the peer alive?"));
      }
    }
    std::this_thread::sleep_for(kPollInterval);
  }
}

}  // namespace

NcclLink::NcclLink(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

NcclLink::~NcclLink() {
  std::lock_guard<std::mutex> lock(impl_->mu);
  (void)cudaSetDevice(impl_->device);
  // Nothing is in flight once a link is dropped; aborting frees its resources without
  // waiting for a peer that may be gone.
  if (!impl_->broken && impl_->comm != nullptr) (void)ncclCommAbort(impl_->comm);
  if (impl_->stream != nullptr) (void)cudaStreamDestroy(impl_->stream);
  if (impl_->copy_stream != nullptr) (void)cudaStreamDestroy(impl_->copy_stream);
  for (int b = 0; b < kStagingBuffers; ++b) {
    if (impl_->staging[b] != nullptr) (void)cudaFree(impl_->staging[b]);
    if (impl_->staged[b] != nullptr) (void)cudaEventDestroy(impl_->staged[b]);
    if (impl_->moved[b] != nullptr) (void)cudaEventDestroy(impl_->moved[b]);
  }
  if (impl_->descriptors != nullptr) (void)cudaFree(impl_->descriptors);
}

absl::StatusOr<std::string> NcclLink::NewUniqueId() {
  ncclUniqueId id;
  if (absl::Status s = NcclError(ncclGetUniqueId(&id), nullptr, "ncclGetUniqueId"); !s.ok()) {
    return s;
  }
  return std::string(id.internal, sizeof(id.internal));
}

absl::StatusOr<std::unique_ptr<NcclLink>> NcclLink::Open(std::string_view unique_id, int rank,
                                                         int device, Deadline deadline,
                                                         const std::atomic<bool>* cancelled) {
  ncclUniqueId id;
  if (unique_id.size() != sizeof(id.internal)) {
    return absl::InvalidArgumentError(absl::StrCat("an NCCL unique id has ", sizeof(id.internal),
                                                   " bytes, not ", unique_id.size()));
  }
  if (rank != 0 && rank != 1) return absl::InvalidArgumentError("a link has ranks 0 and 1");
  std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));
  auto impl = std::make_unique<Impl>();
  impl->rank = rank;
  impl->device = device;
  if (absl::Status s = CudaError(cudaSetDevice(device), "cudaSetDevice"); !s.ok()) return s;
  const int64_t free_before = FreeDeviceBytes();
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  const ncclResult_t init = ncclCommInitRankConfig(&impl->comm, 2, id, rank, &config);
  if (init != ncclSuccess && init != ncclInProgress) {
    if (impl->comm != nullptr) (void)ncclCommAbort(impl->comm);
    return NcclError(init, nullptr, "ncclCommInitRankConfig");
  }
  if (absl::Status s = impl->WaitReady(deadline, "joining the NCCL communicator", cancelled);
      !s.ok()) {
    return s;
  }
  // The highest priority: a transfer that overlaps a prefill gets SMs as they free up.
  int lowest = 0, highest = 0;
  (void)cudaDeviceGetStreamPriorityRange(&lowest, &highest);
  if (absl::Status s =
          CudaError(cudaStreamCreateWithPriority(&impl->stream, cudaStreamNonBlocking, highest),
                    "cudaStreamCreate");
      !s.ok()) {
    std::lock_guard<std::mutex> lock(impl->mu);
    impl->AbortLocked(s.message());
    return s;
  }
  impl->device_bytes = std::max<int64_t>(0, free_before - FreeDeviceBytes());
  return std::unique_ptr<NcclLink>(new NcclLink(std::move(impl)));
}

int NcclLink::rank() const { return impl_->rank; }
int NcclLink::device() const { return impl_->device; }
bool NcclLink::broken() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->broken;
}
int64_t NcclLink::device_bytes() const { return impl_->device_bytes; }

void NcclLink::Abort(std::string_view why) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->AbortLocked(absl::string_view(why.data(), why.size()));
}

absl::Status NcclLink::PostGroup(std::span<const ByteRange> group, Deadline deadline) {
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->broken) return absl::UnavailableError("the NCCL link was aborted");
    (void)cudaSetDevice(impl_->device);
    const int peer = 1 - impl_->rank;
    ncclResult_t result = ncclGroupStart();
    for (const ByteRange& range : group) {
      if (result != ncclSuccess) break;
      result = impl_->rank == 0
                   ? ncclSend(range.data, range.bytes, ncclUint8, peer, impl_->comm, impl_->stream)
                   : ncclRecv(range.data, range.bytes, ncclUint8, peer, impl_->comm, impl_->stream);
    }
    const ncclResult_t ended = ncclGroupEnd();
    if (result == ncclSuccess) result = ended;
    if (result != ncclSuccess && result != ncclInProgress) {
      absl::Status error = NcclError(result, impl_->comm, "posting transfers");
      impl_->AbortLocked(error.message());
      return error;
    }
  }
  // A non-blocking group finishes enqueueing in the background (the first one also
  // connects the peers, which takes the peer's matching group).
  return impl_->WaitReady(deadline, "enqueueing transfers");
}

absl::Status NcclLink::WaitStream(Deadline deadline) {
  cudaEvent_t done = nullptr;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    if (impl_->broken) return absl::UnavailableError("the NCCL link was aborted");
    (void)cudaSetDevice(impl_->device);
    RETURN_IF_ERROR(
        CudaError(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate"));
    if (absl::Status s = CudaError(cudaEventRecord(done, impl_->stream), "cudaEventRecord");
        !s.ok()) {
      (void)cudaEventDestroy(done);
      impl_->AbortLocked(s.message());
      return s;
    }
  }
  struct EventGuard {
    cudaEvent_t event;
    ~EventGuard() { (void)cudaEventDestroy(event); }
  } guard{done};
  return PollEvent(*impl_, done, deadline, "the NCCL transfer");
}

absl::StatusOr<void*> NcclLink::WaitForLayer(const LayerGates& gates, int layer, void* stream) {
  absl::StatusOr<void*> event = gates.placed(layer);
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (!event.ok()) {
    // The peer's receives can no longer be matched: the link goes.
    impl_->AbortLocked(event.status().message());
    return event.status();
  }
  if (impl_->broken) return absl::UnavailableError("the NCCL link was aborted");
  if (*event == nullptr) return nullptr;  // the data was written when the call returned
  (void)cudaSetDevice(impl_->device);
  if (absl::Status s = CudaError(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream),
                                                     static_cast<cudaEvent_t>(*event), 0),
                                 "cudaStreamWaitEvent");
      !s.ok()) {
    impl_->AbortLocked(s.message());
    return s;
  }
  return event;
}

absl::Status NcclLink::Finish(const LayerGates* gates, void* last_gate, Deadline deadline) {
  if (gates == nullptr) return WaitStream(deadline);
  if (last_gate != nullptr) {
    RETURN_IF_ERROR(PollEvent(*impl_, static_cast<cudaEvent_t>(last_gate), deadline,
                              "computing the KV to send"));
  }
  return WaitStream(std::min(deadline, std::chrono::steady_clock::now() + gates->transfer_time));
}

bool NcclLink::Staged(std::span<const ByteRange> ranges) {
  size_t total = 0;
  for (const ByteRange& range : ranges) total += range.bytes;
  return ranges.size() > 1 && total / ranges.size() < kStageBelowBytes;
}

absl::Status NcclLink::Transfer(std::span<const ByteRange> ranges, Deadline deadline,
                                const LayerGates* gates) {
  if (gates != nullptr && impl_->rank != 0) {
    return absl::InvalidArgumentError("only the sender of a link waits for layers");
  }
  if (Staged(ranges)) return TransferStaged(ranges, deadline, gates);
  // Both ranks cut equal ranges equally.
  const std::vector<std::vector<ByteRange>> groups =
      PlanGroups(ranges, kGroupBytes, kMinLayerGroupBytes);
  void* last_gate = nullptr;
  for (const std::vector<ByteRange>& group : groups) {
    if (gates != nullptr) {
      ASSIGN_OR_RETURN(void* gate, WaitForLayer(*gates, group.back().layer, impl_->stream));
      if (gate != nullptr) last_gate = gate;
    }
    RETURN_IF_ERROR(PostGroup(group, deadline));
  }
  return Finish(gates, last_gate, deadline);
}

absl::Status NcclLink::TransferStaged(std::span<const ByteRange> ranges, Deadline deadline,
                                      const LayerGates* gates) {
  // Chunk c goes through buffer b = c % 2. The sender gathers it on the copy stream once
  // the send of chunk c - 2 (same buffer) is done, and sends it once gathered; the
  // receiver receives it once the scatter of chunk c - 2 is done, and scatters it on the
  // copy stream once received. So one chunk travels while the next is copied.
  Impl& link = *impl_;
  StagingPlan plan;
  {
    std::lock_guard<std::mutex> lock(link.mu);
    if (link.broken) return absl::UnavailableError("the NCCL link is broken");
    RETURN_IF_ERROR(CudaError(cudaSetDevice(link.device), "cudaSetDevice"));
    RETURN_IF_ERROR(link.EnsureStaging());
    plan = PlanStaging(ranges, link.rank == 0, link.staging, kStagingBytes);
    if (link.descriptor_capacity < plan.copies.size()) {
      if (link.descriptors != nullptr) (void)cudaFree(link.descriptors);
      link.descriptors = nullptr;
      link.descriptor_capacity = 0;
      RETURN_IF_ERROR(
          CudaError(cudaMalloc(&link.descriptors, plan.copies.size() * sizeof(RangeCopy)),
                    "copy descriptors"));
      link.descriptor_capacity = plan.copies.size();
    }
  }
  // Enqueues under the lock; an error aborts the link.
  auto enqueue = [&](const std::function<absl::Status()>& step) {
    std::lock_guard<std::mutex> lock(link.mu);
    if (link.broken) return absl::UnavailableError("the NCCL link was aborted");
    (void)cudaSetDevice(link.device);
    absl::Status status = step();
    if (!status.ok()) link.AbortLocked(status.message());
    return status;
  };
  auto record = [](cudaEvent_t event, cudaStream_t stream) {
    return CudaError(cudaEventRecord(event, stream), "cudaEventRecord");
  };
  auto wait = [](cudaStream_t stream, cudaEvent_t event) {
    return CudaError(cudaStreamWaitEvent(stream, event, 0), "cudaStreamWaitEvent");
  };
  // The descriptors (from pageable memory: the call returns once the bytes are taken),
  // then the copy stream follows everything queued on the link so far.
  RETURN_IF_ERROR(enqueue([&]() -> absl::Status {
    RETURN_IF_ERROR(CudaError(cudaMemcpyAsync(link.descriptors, plan.copies.data(),
                                              plan.copies.size() * sizeof(RangeCopy),
                                              cudaMemcpyHostToDevice, link.stream),
                              "uploading copy descriptors"));
    RETURN_IF_ERROR(record(link.moved[0], link.stream));
    return wait(link.copy_stream, link.moved[0]);
  }));
  void* last_gate = nullptr;
  for (size_t c = 0; c < plan.chunk_first.size(); ++c) {
    const int b = static_cast<int>(c % kStagingBuffers);
    const bool reused = c >= static_cast<size_t>(kStagingBuffers);
    const int count = static_cast<int>(plan.chunk_end(c) - plan.chunk_first[c]);
    const RangeCopy* chunk = link.descriptors + plan.chunk_first[c];
    const ByteRange staged{plan.chunk_buffer[c], plan.chunk_bytes[c]};
    if (link.rank == 0) {
      if (gates != nullptr) {
        ASSIGN_OR_RETURN(void* gate,
                         WaitForLayer(*gates, plan.chunk_last_layer[c], link.copy_stream));
        if (gate != nullptr) last_gate = gate;
      }
      RETURN_IF_ERROR(enqueue([&]() -> absl::Status {
        if (reused) RETURN_IF_ERROR(wait(link.copy_stream, link.moved[b]));
        RETURN_IF_ERROR(LaunchCopyRanges(chunk, count, link.copy_stream));
        RETURN_IF_ERROR(record(link.staged[b], link.copy_stream));
        return wait(link.stream, link.staged[b]);
      }));
      RETURN_IF_ERROR(PostGroup({&staged, 1}, deadline));
      RETURN_IF_ERROR(enqueue([&] { return record(link.moved[b], link.stream); }));
    } else {
      if (reused) RETURN_IF_ERROR(enqueue([&] { return wait(link.stream, link.staged[b]); }));
      RETURN_IF_ERROR(PostGroup({&staged, 1}, deadline));
      RETURN_IF_ERROR(enqueue([&]() -> absl::Status {
        RETURN_IF_ERROR(record(link.moved[b], link.stream));
        RETURN_IF_ERROR(wait(link.copy_stream, link.moved[b]));
        RETURN_IF_ERROR(LaunchCopyRanges(chunk, count, link.copy_stream));
        return record(link.staged[b], link.copy_stream);
      }));
    }
  }
  // The link's stream ends after the last copy too, so Finish covers both streams.
  RETURN_IF_ERROR(enqueue([&]() -> absl::Status {
    RETURN_IF_ERROR(record(link.staged[0], link.copy_stream));
    return wait(link.stream, link.staged[0]);
  }));
  return Finish(gates, last_gate, deadline);
}

}  // namespace lserve::nccl
