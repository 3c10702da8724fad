// Copies many device byte ranges in one launch: the gather before and the scatter after
// a staged NCCL transfer, when a KV sequence's pages are scattered over the pools and
// sending them range by range would cost more per range than the bytes do.
#ifndef LSERVE_KERNELS_NCCL_COPY_RANGES_H_
#define LSERVE_KERNELS_NCCL_COPY_RANGES_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"

namespace lserve::nccl {

struct RangeCopy {
  const void* src = nullptr;
  void* dst = nullptr;
  uint64_t bytes = 0;
};

// Enqueues the `count` copies described at `device_copies` (device memory) on `stream`
// (a cudaStream_t), in one launch.
absl::Status LaunchCopyRanges(const RangeCopy* device_copies, int count, void* stream);

}  // namespace lserve::nccl

#endif  // LSERVE_KERNELS_NCCL_COPY_RANGES_H_
