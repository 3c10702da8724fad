#include <cuda_runtime.h>

#include "absl/strings/str_cat.h"
#include "kernels/nccl/copy_ranges.h"

namespace lserve::nccl {
namespace {

// One block per range at a time (grid-stride over ranges); 16-byte vectors where both
// ends are aligned, bytes otherwise.
__global__ void CopyRangesKernel(const RangeCopy* copies, int count) {
  for (int i = blockIdx.x; i < count; i += gridDim.x) {
    const RangeCopy copy = copies[i];
    const auto* src = static_cast<const unsigned char*>(copy.src);
    auto* dst = static_cast<unsigned char*>(copy.dst);
    const bool aligned =
        ((reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst)) & 15) == 0;
    uint64_t done = 0;
    if (aligned) {
      const uint64_t vectors = copy.bytes / 16;
      const auto* s = reinterpret_cast<const int4*>(src);
      auto* d = reinterpret_cast<int4*>(dst);
      for (uint64_t v = threadIdx.x; v < vectors; v += blockDim.x) d[v] = s[v];
      done = vectors * 16;
    }
    for (uint64_t b = done + threadIdx.x; b < copy.bytes; b += blockDim.x) dst[b] = src[b];
  }
}

}  // namespace

absl::Status LaunchCopyRanges(const RangeCopy* device_copies, int count, void* stream) {
  if (count <= 0) return absl::OkStatus();
  const int blocks = count < 1024 ? count : 1024;
  CopyRangesKernel<<<blocks, 512, 0, static_cast<cudaStream_t>(stream)>>>(device_copies, count);
  const cudaError_t error = cudaGetLastError();
  if (error != cudaSuccess) {
    return absl::InternalError(absl::StrCat("copying ranges: ", cudaGetErrorString(error)));
  }
  return absl::OkStatus();
}

}  // namespace lserve::nccl
