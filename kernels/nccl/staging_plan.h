// How a staged transfer cuts scattered ranges into chunks of the staging buffers: each
// range is split where a chunk fills, and each piece gets its offset in its chunk; chunk
// c goes through buffer c mod the number of buffers (so one chunk moves while the next
// is gathered or the last scattered). Both ranks cut ranges of equal sizes identically,
// so chunk c of the sender's gather is chunk c of the receiver's scatter.
#ifndef LSERVE_KERNELS_NCCL_STAGING_PLAN_H_
#define LSERVE_KERNELS_NCCL_STAGING_PLAN_H_

#include <cstddef>
#include <span>
#include <vector>

#include "kernels/nccl/copy_ranges.h"
#include "kernels/nccl/nccl_link.h"

namespace lserve::nccl {

struct StagingPlan {
  std::vector<RangeCopy> copies;      // chunk after chunk
  std::vector<size_t> chunk_first;    // index of each chunk's first copy
  std::vector<size_t> chunk_bytes;    // bytes of each chunk (the last may be short)
  std::vector<int> chunk_last_layer;  // the layer of each chunk's last range
  std::vector<void*> chunk_buffer;    // the staging buffer of each chunk

  size_t chunk_end(size_t chunk) const {
    return chunk + 1 < chunk_first.size() ? chunk_first[chunk + 1] : copies.size();
  }
};

// How a direct (unstaged) transfer cuts ranges into NCCL groups: pieces of at most
// `max_group_bytes`, grouped up to that, a group ending between layers once it holds
// `layer_group_bytes`, so a sender can send each layer group as soon as it is written.
// Both ranks cut ranges of equal sizes and layers identically. Empty ranges are skipped.
std::vector<std::vector<ByteRange>> PlanGroups(std::span<const ByteRange> ranges,
                                               size_t max_group_bytes, size_t layer_group_bytes);

// `gather`: copies from the ranges into the buffers (the sender); else from the buffers
// into the ranges (the receiver). Empty ranges are skipped.
StagingPlan PlanStaging(std::span<const ByteRange> ranges, bool gather,
                        std::span<void* const> buffers, size_t buffer_bytes);

}  // namespace lserve::nccl

#endif  // LSERVE_KERNELS_NCCL_STAGING_PLAN_H_
