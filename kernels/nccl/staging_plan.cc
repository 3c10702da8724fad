#include "kernels/nccl/staging_plan.h"

#include <algorithm>
#include <cstdint>

namespace lserve::nccl {

StagingPlan PlanStaging(std::span<const ByteRange> ranges, bool gather,
                        std::span<void* const> buffers, size_t buffer_bytes) {
  StagingPlan plan;
  size_t filled = buffer_bytes;  // the current chunk's bytes; "full" opens the first
  for (const ByteRange& range : ranges) {
    for (size_t offset = 0; offset < range.bytes;) {
      if (filled == buffer_bytes) {
        plan.chunk_buffer.push_back(buffers[plan.chunk_first.size() % buffers.size()]);
        plan.chunk_first.push_back(plan.copies.size());
        plan.chunk_bytes.push_back(0);
        plan.chunk_last_layer.push_back(range.layer);
        filled = 0;
      }
      const size_t bytes = std::min(range.bytes - offset, buffer_bytes - filled);
      uint8_t* pool = static_cast<uint8_t*>(range.data) + offset;
      uint8_t* staged = static_cast<uint8_t*>(plan.chunk_buffer.back()) + filled;
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
