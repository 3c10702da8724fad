#include "kernels/cuda/staging_arena.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>

#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"

namespace lserve::cuda {
namespace {

using internal::AsStream;
using internal::CudaStatus;

constexpr size_t kAlignment = 256;
constexpr size_t kFirstBlockBytes = 1 << 20;

void FreePinned(void* host) { cudaFreeHost(host); }

}  // namespace

void StagingArena::Reset() {
  if (blocks_.size() > 1) blocks_.erase(blocks_.begin(), blocks_.end() - 1);
  for (Block& block : blocks_) {
    block.used = 0;
    block.uploaded = 0;
    block.deferred = false;
  }
}

absl::Status StagingArena::AddBlock(size_t at_least) {
  const size_t previous = blocks_.empty() ? 0 : blocks_.back().device.bytes();
  Block block;
  ASSIGN_OR_RETURN(block.device,
                   Buffer::Allocate(device_, std::max({kFirstBlockBytes, 2 * previous, at_least})));
  blocks_.push_back(std::move(block));
  ++generation_;
  return absl::OkStatus();
}

absl::StatusOr<void*> StagingArena::Stage(const void* host, size_t bytes, bool deferred,
                                          void* stream) {
  // Deferred arrays take power-of-two slots, so a step whose arrays grew a little keeps
  // every offset and its graph stays valid.
  const size_t slot = deferred ? std::max(kAlignment, std::bit_ceil(bytes))
                               : (bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (blocks_.empty() || blocks_.back().used + slot > blocks_.back().device.bytes()) {
    RETURN_IF_ERROR(AddBlock(slot));
  }
  Block& block = blocks_.back();
  uint8_t* device = static_cast<uint8_t*>(block.device.data()) + block.used;
  if (deferred) {
    if (block.mirror == nullptr) {
      void* pinned = nullptr;
      RETURN_IF_ERROR(CudaStatus(cudaMallocHost(&pinned, block.device.bytes()), "staging mirror"));
      block.mirror = {pinned, FreePinned};
    }
    std::memcpy(static_cast<uint8_t*>(block.mirror.get()) + block.used, host, bytes);
    block.deferred = true;
  } else {
    RETURN_IF_ERROR(
        CudaStatus(cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, AsStream(stream)),
                   "staging copy"));
  }
  block.used += slot;
  return static_cast<void*>(device);
}

absl::Status StagingArena::Upload(void* stream) {
  for (Block& block : blocks_) {
    if (!block.deferred || block.used == block.uploaded) continue;
    RETURN_IF_ERROR(CudaStatus(
        cudaMemcpyAsync(static_cast<uint8_t*>(block.device.data()) + block.uploaded,
                        static_cast<uint8_t*>(block.mirror.get()) + block.uploaded,
                        block.used - block.uploaded, cudaMemcpyHostToDevice, AsStream(stream)),
        "staging upload"));
    block.uploaded = block.used;
  }
  return absl::OkStatus();
}

}  // namespace lserve::cuda
