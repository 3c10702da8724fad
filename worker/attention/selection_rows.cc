#include "worker/attention/selection_rows.h"

#include <algorithm>

#include "common/status_macros.h"

namespace lserve {

absl::StatusOr<int32_t> SelectionRows::FirstRow(SeqId seq) {
  auto it = block_of_.find(seq);
  if (it == block_of_.end()) {
    if (free_blocks_.empty()) RETURN_IF_ERROR(Grow());
    const int32_t block = free_blocks_.back();
    free_blocks_.pop_back();
    it = block_of_.emplace(seq, block).first;
  }
  return it->second * rows_per_seq_;
}

void SelectionRows::Forget(SeqId seq) {
  auto it = block_of_.find(seq);
  if (it == block_of_.end()) return;
  free_blocks_.push_back(it->second);
  block_of_.erase(it);
}

absl::Status SelectionRows::Grow() {
  const int32_t blocks = std::max<int32_t>(8, 2 * capacity_blocks_);
  const size_t rows = static_cast<size_t>(blocks) * rows_per_seq_;
  ASSIGN_OR_RETURN(Buffer pages, Buffer::Allocate(memory_, rows * stride_ * sizeof(int32_t)));
  ASSIGN_OR_RETURN(Buffer counts, Buffer::Allocate(memory_, rows * sizeof(int32_t)));
  if (capacity_blocks_ > 0) {
    // Ordered after the work already queued on the backend, which may still write rows.
    RETURN_IF_ERROR(memory_->Copy(pages.data(), pages_.data(), pages_.bytes()));
    RETURN_IF_ERROR(memory_->Copy(counts.data(), counts_.data(), counts_.bytes()));
  }
  pages_ = std::move(pages);
  counts_ = std::move(counts);
  // Lower blocks are handed out first.
  for (int32_t b = blocks - 1; b >= capacity_blocks_; --b) free_blocks_.push_back(b);
  capacity_blocks_ = blocks;
  return absl::OkStatus();
}

}  // namespace lserve
