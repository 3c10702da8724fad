#include "kvstore/page_allocator.h"

#include "absl/strings/str_cat.h"

namespace lserve {

PageAllocator::PageAllocator(int64_t num_pages) : ref_counts_(num_pages, 0) {
  free_list_.reserve(num_pages);
  // Hand out low page ids first: keeps small workloads compact and tests readable.
  for (int64_t page = num_pages - 1; page >= 0; --page) free_list_.push_back(page);
}

absl::StatusOr<PageId> PageAllocator::Allocate() {
  if (free_list_.empty()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache is full: all ", num_pages(), " pages are in use"));
  }
  const PageId page = free_list_.back();
  free_list_.pop_back();
  ref_counts_[page] = 1;
  return page;
}

absl::StatusOr<std::vector<PageId>> PageAllocator::AllocateMany(int64_t count) {
  if (count > num_free()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache is full: need ", count, " pages, ", num_free(), " free"));
  }
  std::vector<PageId> pages;
  pages.reserve(count);
  for (int64_t i = 0; i < count; ++i) pages.push_back(*Allocate());
  return pages;
}

absl::Status PageAllocator::CheckAllocated(PageId page) const {
  if (page < 0 || page >= num_pages()) {
    return absl::InvalidArgumentError(absl::StrCat("page id ", page, " out of range"));
  }
  if (ref_counts_[page] == 0) {
    return absl::FailedPreconditionError(absl::StrCat("page ", page, " is not allocated"));
  }
  return absl::OkStatus();
}

absl::Status PageAllocator::AddRef(PageId page) {
  if (absl::Status status = CheckAllocated(page); !status.ok()) return status;
  ++ref_counts_[page];
  return absl::OkStatus();
}

absl::Status PageAllocator::Release(PageId page) {
  if (absl::Status status = CheckAllocated(page); !status.ok()) return status;
  if (--ref_counts_[page] == 0) free_list_.push_back(page);
  return absl::OkStatus();
}

}  // namespace lserve
