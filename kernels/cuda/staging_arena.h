// The per-step arena behind Backend::Stage: small host arrays (positions, page tables,
// jobs) in device memory, valid until the next Reset. Eager steps copy each array as it
// is staged, in stream order. Recorded steps (step_graphs.h) defer the copies: arrays go
// to a pinned host mirror at offsets that depend only on the sequence of their sizes
// rounded up to powers of two, and Upload copies them in one transfer before the step's
// launches, so a replayed graph finds every array where its launches expect it.
#ifndef LSERVE_KERNELS_CUDA_STAGING_ARENA_H_
#define LSERVE_KERNELS_CUDA_STAGING_ARENA_H_

#include <cstddef>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/memory_space.h"

namespace lserve::cuda {

class StagingArena {
 public:
  explicit StagingArena(MemorySpace* device) : device_(device) {}
  // Starts a step; the previous step's work must have finished.
  void Reset();
  // Device memory holding a copy of `bytes` bytes at `host`: copied now on `stream`, or,
  // when `deferred`, by the next Upload.
  absl::StatusOr<void*> Stage(const void* host, size_t bytes, bool deferred, void* stream);
  // Copies the arrays staged deferred since the last Upload (or Reset), on `stream`.
  absl::Status Upload(void* stream);
  // Counts the blocks ever added: launches recorded before a change may name memory
  // freed since, so graphs of older tapes must go.
  int64_t generation() const { return generation_; }

 private:
  struct Block {
    Buffer device;
    std::unique_ptr<void, void (*)(void*)> mirror{nullptr, nullptr};  // pinned host
    size_t used = 0;
    size_t uploaded = 0;    // deferred bytes [0, uploaded) are on their way to the device
    bool deferred = false;  // holds deferred arrays of this step
  };
  absl::Status AddBlock(size_t at_least);

  MemorySpace* device_;
  // The last block takes new arrays; earlier ones filled up during this step and are
  // kept until the next Reset, which keeps only the last.
  std::vector<Block> blocks_;
  int64_t generation_ = 0;
};

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_STAGING_ARENA_H_
