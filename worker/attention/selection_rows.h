// Page selections kept in backend memory (DESIGN.md §3): each sequence owns a block of
// rows, one per (layer, selection key), where the GPU's top-k writes its pages and the
// decode kernel reads them on the following steps, so selections never travel to the host.
#ifndef LSERVE_WORKER_ATTENTION_SELECTION_ROWS_H_
#define LSERVE_WORKER_ATTENTION_SELECTION_ROWS_H_

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "common/memory_space.h"
#include "kvstore/page_tables.h"

namespace lserve {

class SelectionRows {
 public:
  // Rows of `stride` page indices; every sequence gets rows_per_seq of them.
  SelectionRows(MemorySpace* memory, int rows_per_seq, int stride)
      : memory_(memory), rows_per_seq_(rows_per_seq), stride_(stride) {}

  // The first row of the sequence's block, assigning one (growing the buffers, whose
  // contents move along) when the sequence has none.
  absl::StatusOr<int32_t> FirstRow(SeqId seq);
  // Returns the sequence's block for reuse.
  void Forget(SeqId seq);

  int32_t* pages() const { return pages_.as<int32_t>(); }
  int32_t* counts() const { return counts_.as<int32_t>(); }
  int stride() const { return stride_; }
  int64_t blocks_in_use() const { return static_cast<int64_t>(block_of_.size()); }

 private:
  absl::Status Grow();

  MemorySpace* memory_;
  int rows_per_seq_;
  int stride_;
  int32_t capacity_blocks_ = 0;
  std::unordered_map<SeqId, int32_t> block_of_;
  std::vector<int32_t> free_blocks_;
  Buffer pages_;   // [blocks * rows_per_seq][stride]
  Buffer counts_;  // [blocks * rows_per_seq]
};

}  // namespace lserve

#endif  // LSERVE_WORKER_ATTENTION_SELECTION_ROWS_H_
