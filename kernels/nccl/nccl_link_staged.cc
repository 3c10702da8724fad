// NcclLink's staged transfers: scattered ranges gathered into two staging buffers in
// turn on a copy stream, sent chunk by chunk, and scattered likewise on the other side.
#include <functional>
#include <vector>

#include "kernels/nccl/nccl_link.h"
#include "kernels/nccl/nccl_link_impl.h"
#include "kernels/nccl/staging_plan.h"

namespace lserve::nccl {

using internal::CudaError;
using internal::kStagingBuffers;
using internal::kStagingBytes;

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
