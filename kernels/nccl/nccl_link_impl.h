// NcclLink's internals, shared by nccl_link.cc (joining, direct transfers) and
// nccl_link_staged.cc (staged transfers): the tuning constants, status helpers and the
// Impl every call locks. Needs the CUDA and NCCL headers; not for use outside the link.
#ifndef LSERVE_KERNELS_NCCL_NCCL_LINK_IMPL_H_
#define LSERVE_KERNELS_NCCL_NCCL_LINK_IMPL_H_

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kernels/nccl/copy_ranges.h"
#include "kernels/nccl/nccl_link.h"

namespace lserve::nccl {
namespace internal {

inline constexpr auto kPollInterval = std::chrono::microseconds(20);
inline constexpr size_t kGroupBytes = size_t{1} << 30;
// A group ends between layers once it holds this much, so a sender whose layers are
// still being computed sends each part as soon as it is written.
inline constexpr size_t kMinLayerGroupBytes = size_t{64} << 20;
// Ranges averaging less than this go through the staging buffer: NCCL costs about 7 us
// per send/recv pair, so 256 KiB pages one by one run at a tenth of the link's speed.
inline constexpr size_t kStageBelowBytes = size_t{8} << 20;
// Two staging buffers: one chunk travels while the next is gathered (or the last one
// scattered) on the copy stream.
inline constexpr size_t kStagingBytes = size_t{128} << 20;
inline constexpr int kStagingBuffers = 2;

inline absl::Status CudaError(cudaError_t error, absl::string_view what) {
  if (error == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(error)));
}

inline absl::Status NcclError(ncclResult_t result, ncclComm_t comm, absl::string_view what) {
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

}  // namespace internal

struct NcclLink::Impl {
  mutable std::mutex mu;
  ncclComm_t comm = nullptr;
  cudaStream_t stream = nullptr;
  int rank = 0;
  int device = 0;
  bool broken = false;
  int64_t device_bytes = 0;
  // Scattered ranges: internal::kStagingBuffers buffers of internal::kStagingBytes, the stream that
  // gathers into them or scatters out of them, and per buffer an event after its copy (staged) and
  // after its send or receive (moved).
  void* staging[internal::kStagingBuffers] = {};
  cudaStream_t copy_stream = nullptr;
  cudaEvent_t staged[internal::kStagingBuffers] = {};
  cudaEvent_t moved[internal::kStagingBuffers] = {};
  RangeCopy* descriptors = nullptr;
  size_t descriptor_capacity = 0;

  absl::Status EnsureStaging() {
    if (copy_stream != nullptr) return absl::OkStatus();
    // What an earlier failed attempt made stays (the destructor frees it).
    for (int b = 0; b < internal::kStagingBuffers; ++b) {
      if (staging[b] == nullptr) {
        RETURN_IF_ERROR(internal::CudaError(cudaMalloc(&staging[b], internal::kStagingBytes),
                                            "staging buffer"));
      }
      if (staged[b] == nullptr) {
        RETURN_IF_ERROR(internal::CudaError(
            cudaEventCreateWithFlags(&staged[b], cudaEventDisableTiming), "cudaEventCreate"));
      }
      if (moved[b] == nullptr) {
        RETURN_IF_ERROR(internal::CudaError(
            cudaEventCreateWithFlags(&moved[b], cudaEventDisableTiming), "cudaEventCreate"));
      }
    }
    int lowest = 0, highest = 0;
    (void)cudaDeviceGetStreamPriorityRange(&lowest, &highest);
    return internal::CudaError(
        cudaStreamCreateWithPriority(&copy_stream, cudaStreamNonBlocking, highest),
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
        absl::Status error = internal::NcclError(state, comm, what);
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
      std::this_thread::sleep_for(internal::kPollInterval);
    }
  }
};

namespace internal {

// Polls until `event` has passed (no lock held while sleeping), watching the link for
// errors; at the deadline the link aborts.
absl::Status PollEvent(NcclLink::Impl& impl, cudaEvent_t event, Deadline deadline,
                       absl::string_view what);

}  // namespace internal
}  // namespace lserve::nccl

#endif  // LSERVE_KERNELS_NCCL_NCCL_LINK_IMPL_H_
