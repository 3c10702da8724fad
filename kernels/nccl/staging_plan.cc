#include "kernels/nccl/staging_plan.h"

#include <algorithm>
#include <cstdint>

namespace lserve::nccl {

std::vector<std::vector<ByteRange>> PlanGroups(std::span<const ByteRange> ranges,
                                               size_t max_group_bytes, size_t layer_group_bytes) {
  std::vector<std::vector<ByteRange>> groups;
  size_t group_bytes = 0;
  for (const ByteRange& range : ranges) {
    for (size_t offset = 0; offset < range.bytes; offset += max_group_bytes) {
      const size_t bytes = std::min(max_group_bytes, range.bytes - offset);
      const bool layer_ends = !groups.empty() && groups.back().back().layer != range.layer;
      if (groups.empty() || group_bytes + bytes > max_group_bytes ||
          (layer_ends && group_bytes >= layer_group_bytes)) {
        groups.emplace_back();
        group_bytes = 0;
      }
      groups.back().push_back({static_cast<uint8_t*>(range.data) + offset, bytes, range.layer});
      group_bytes += bytes;
    }
  }
  return groups;
}

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
