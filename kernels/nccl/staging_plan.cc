#include "kernels/nccl/staging_plan.h"

#include <algorithm>
#include <cstdint>

namespace lserve::nccl {

StagingPlan PlanStaging(std::span<const ByteRange> ranges, bool gather, void* staging,
                        size_t staging_bytes) {
  StagingPlan plan;
  size_t filled = staging_bytes;  // the current chunk's bytes; "full" opens the first
  for (const ByteRange& range : ranges) {
    for (size_t offset = 0; offset < range.bytes;) {
      if (filled == staging_bytes) {
        plan.chunk_first.push_back(plan.copies.size());
        plan.chunk_bytes.push_back(0);
        plan.chunk_last_layer.push_back(range.layer);
        filled = 0;
      }
      const size_t bytes = std::min(range.bytes - offset, staging_bytes - filled);
      uint8_t* pool = static_cast<uint8_t*>(range.data) + offset;
      uint8_t* staged = static_cast<uint8_t*>(staging) + filled;
      plan.copies.push_back(gather ? RangeCopy{pool, staged, bytes}
                                   : RangeCopy{staged, pool, bytes});
      filled += bytes;
      plan.chunk_bytes.back() += bytes;
      plan.chunk_last_layer.back() = range.layer;
      offset += bytes;
    }
  }
  return plan;
}

}  // namespace lserve::nccl
