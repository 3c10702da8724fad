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
#include "kernels/nccl/nccl_link_impl.h"
#include "kernels/nccl/staging_plan.h"

namespace lserve::nccl {

using internal::CudaError;
using internal::kGroupBytes;
using internal::kMinLayerGroupBytes;
using internal::kPollInterval;
using internal::kStageBelowBytes;
using internal::kStagingBuffers;
using internal::NcclError;
using internal::PollEvent;

namespace {

int64_t FreeDeviceBytes() {
  size_t free = 0, total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) return 0;
  return static_cast<int64_t>(free);
}

}  // namespace

namespace internal {

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

}  // namespace internal

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

}  // namespace lserve::nccl
