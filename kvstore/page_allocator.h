// Physical KV page allocator: a free list plus reference counts, so pages can be shared
// (prefix reuse, hand-off leases) and are recycled only when the last holder lets go.
#ifndef LSERVE_KVSTORE_PAGE_ALLOCATOR_H_
#define LSERVE_KVSTORE_PAGE_ALLOCATOR_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lserve {

using PageId = int32_t;
inline constexpr PageId kNoPage = -1;

// Not thread-safe: one engine thread owns the allocator.
class PageAllocator {
 public:
  explicit PageAllocator(int64_t num_pages);

  // A fresh page with reference count 1, or RESOURCE_EXHAUSTED when none is free.
  absl::StatusOr<PageId> Allocate();
  // Allocates `count` pages or none at all.
  absl::StatusOr<std::vector<PageId>> AllocateMany(int64_t count);
  // Adds a holder to an allocated page.
  absl::Status AddRef(PageId page);
  // Drops one holder; the page returns to the free list when none is left.
  absl::Status Release(PageId page);

  int64_t num_pages() const { return static_cast<int64_t>(ref_counts_.size()); }
  int64_t num_free() const { return static_cast<int64_t>(free_list_.size()); }
  int64_t num_used() const { return num_pages() - num_free(); }
  int32_t ref_count(PageId page) const { return ref_counts_.at(page); }

 private:
  absl::Status CheckAllocated(PageId page) const;

  std::vector<int32_t> ref_counts_;
  std::vector<PageId> free_list_;
};

}  // namespace lserve

#endif  // LSERVE_KVSTORE_PAGE_ALLOCATOR_H_
