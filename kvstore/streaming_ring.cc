#include "kvstore/streaming_ring.h"

#include <algorithm>

#include "common/logging.h"

namespace lserve {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

RingGeometry RingGeometry::For(const KvStoreConfig& c) {
  RingGeometry g;
  g.page_size = c.page_size;
  g.sink_pages = CeilDiv(c.sink, c.page_size);
  g.prefill_slots = CeilDiv(c.prefill_local + c.max_chunk_tokens, c.page_size) + 1;
  g.decode_slots = CeilDiv(c.decode_local, c.page_size) + 1;
  g.prefill_local = c.prefill_local;
  g.decode_local = c.decode_local;
  return g;
}

int64_t RingGeometry::MaxPagesFor(int64_t tokens) const {
  return std::min(CeilDiv(tokens, page_size), sink_pages + prefill_slots);
}

int64_t RingGeometry::SinkEnd(int64_t length) const {
  return std::min(sink_pages, CeilDiv(length, page_size));
}

int64_t RingGeometry::WindowBegin(int64_t length) const {
  // The first query of the next chunk sits at `length` and sees keys above
  // length - prefill_local; later queries see only later keys.
  const int64_t first_key = std::max(ring_start(), length - prefill_local + 1);
  return first_key / page_size;
}

int64_t StreamingRing::num_slots() const { return static_cast<int64_t>(slots_.size()); }

int64_t StreamingRing::PagesHeld() const {
  return static_cast<int64_t>(sink_.size()) +
         std::count_if(slots_.begin(), slots_.end(), [](PageId p) { return p != kNoPage; });
}

std::pair<PageId, int32_t> StreamingRing::Location(int64_t pos) const {
  const int64_t p = g_.page_size;
  const int64_t start = g_.ring_start();
  if (pos < start) return {sink_[pos / p], static_cast<int32_t>(pos % p)};
  const int64_t offset = pos - start;
  return {slots_[(offset / p) % num_slots()], static_cast<int32_t>(offset % p)};
}

PageId StreamingRing::PageAtIndex(int64_t index, int64_t length) const {
  if (index < 0 || index * g_.page_size >= length) return kNoPage;
  if (index < g_.sink_pages) {
    return index < static_cast<int64_t>(sink_.size()) ? sink_[index] : kNoPage;
  }
  if (slots_.empty()) return kNoPage;
  const int64_t lp = index - g_.sink_pages;
  const int64_t last_lp = (length - 1 - g_.ring_start()) / g_.page_size;
  // A slot holds the newest ring page of its residue class.
  if (lp <= last_lp - num_slots()) return kNoPage;
  return slots_[lp % num_slots()];
}

std::vector<std::pair<int64_t, PageId>> StreamingRing::HeldPages(int64_t length) const {
  std::vector<std::pair<int64_t, PageId>> held;
  for (int64_t i = 0; i < static_cast<int64_t>(sink_.size()); ++i) held.emplace_back(i, sink_[i]);
  if (slots_.empty() || length <= g_.ring_start()) return held;
  const int64_t last_lp = (length - 1 - g_.ring_start()) / g_.page_size;
  for (int64_t lp = std::max<int64_t>(0, last_lp - num_slots() + 1); lp <= last_lp; ++lp) {
    const PageId page = slots_[lp % num_slots()];
    if (page != kNoPage) held.emplace_back(lp + g_.sink_pages, page);
  }
  return held;
}

// Ring pages needed to store [length, new_len) in `slots`: empty slots, and slots whose
// page is shared and about to be overwritten with a newer ring page.
int64_t StreamingRing::RingPagesNeeded(const PageAllocator& allocator,
                                       const std::vector<PageId>& slots, int64_t num_slots,
                                       int64_t length, int64_t new_len) const {
  const int64_t start = g_.ring_start();
  if (new_len <= start) return 0;
  const int64_t p = g_.page_size;
  const int64_t first_lp = length <= start ? 0 : (length - start) / p;
  const int64_t last_lp = (new_len - 1 - start) / p;
  const bool first_is_partial = length > start && (length - start) % p != 0;
  std::vector<bool> counted(num_slots, false);
  int64_t needed = 0;
  for (int64_t lp = first_lp; lp <= last_lp; ++lp) {
    const int64_t slot = lp % num_slots;
    if (counted[slot]) continue;
    counted[slot] = true;
    const PageId page = slots.empty() ? kNoPage : slots[slot];
    if (page == kNoPage) {
      ++needed;
    } else if (!(lp == first_lp && first_is_partial) && allocator.ref_count(page) > 1) {
      ++needed;
    }
  }
  return needed;
}

std::vector<PageId> StreamingRing::ShrunkSlots(int64_t length, int64_t new_len) const {
  if (slots_.empty()) return {};
  const int64_t p = g_.page_size;
  const int64_t start = g_.ring_start();
  const int64_t new_slots = g_.decode_slots;
  std::vector<PageId> ring(new_slots, kNoPage);
  // The pages of the newest query's window move to their decode slots; the others are
  // left to release.
  const int64_t window_start = std::max(start, new_len - g_.decode_local);
  if (length > start && window_start < length) {
    const int64_t lp_hi = (length - 1 - start) / p;
    for (int64_t lp = (window_start - start) / p; lp <= lp_hi; ++lp) {
      ring[lp % new_slots] = slots_[lp % num_slots()];
    }
  }
  return ring;
}

int64_t StreamingRing::PagesNeeded(const PageAllocator& allocator, int64_t length, int64_t new_len,
                                   bool decode) const {
  const int64_t sink =
      std::max<int64_t>(0, g_.SinkEnd(new_len) - static_cast<int64_t>(sink_.size()));
  if (decode && !decoding_) {
    // Entering decode shrinks the ring first; the pages it frees serve the new token.
    const std::vector<PageId> shrunk = ShrunkSlots(length, new_len);
    int64_t freed = 0;
    for (PageId page : slots_) {
      if (page == kNoPage || std::find(shrunk.begin(), shrunk.end(), page) != shrunk.end()) {
        continue;
      }
      freed += allocator.ref_count(page) == 1;
    }
    const int64_t ring =
        RingPagesNeeded(allocator, shrunk, g_.decode_slots, length, new_len) - freed;
    return sink + std::max<int64_t>(0, ring);
  }
  return sink + RingPagesNeeded(allocator, slots_,
                                slots_.empty() ? SlotCount(decoding_) : num_slots(), length,
                                new_len);
}

void StreamingRing::Grow(PageAllocator& allocator, int64_t length, int64_t new_len, bool decode) {
  if (decode && !decoding_) {
    std::vector<PageId> ring = ShrunkSlots(length, length + 1);
    for (PageId page : slots_) {
      if (page != kNoPage && std::find(ring.begin(), ring.end(), page) == ring.end()) {
        CHECK(allocator.Release(page).ok());
      }
    }
    slots_ = std::move(ring);
    decoding_ = true;
  }
  while (static_cast<int64_t>(sink_.size()) < g_.SinkEnd(new_len)) {
    sink_.push_back(*allocator.Allocate());
  }
  const int64_t start = g_.ring_start();
  if (new_len <= start) return;
  if (slots_.empty()) slots_.assign(SlotCount(decoding_), kNoPage);
  const int64_t p = g_.page_size;
  const int64_t first_lp = length <= start ? 0 : (length - start) / p;
  const bool first_is_partial = length > start && (length - start) % p != 0;
  for (int64_t lp = first_lp; lp <= (new_len - 1 - start) / p; ++lp) {
    PageId& page = slots_[lp % num_slots()];
    if (page != kNoPage && !(lp == first_lp && first_is_partial) && allocator.ref_count(page) > 1) {
      CHECK(allocator.Release(page).ok());  // shared: leave it to its other holders
      page = kNoPage;
    }
    if (page == kNoPage) page = *allocator.Allocate();
  }
}

void StreamingRing::Release(PageAllocator& allocator) {
  // In reverse, as KvPageTables::FreeSequence does, so pages come back in ascending runs.
  for (auto page = slots_.rbegin(); page != slots_.rend(); ++page) {
    if (*page != kNoPage) CHECK(allocator.Release(*page).ok());
  }
  for (auto page = sink_.rbegin(); page != sink_.rend(); ++page) {
    CHECK(allocator.Release(*page).ok());
  }
  sink_.clear();
  slots_.clear();
  decoding_ = false;
}

void StreamingRing::AttachPrefix(PageAllocator& allocator, int64_t length,
                                 std::span<const PageId> by_index) {
  CHECK(sink_.empty() && slots_.empty());
  for (int64_t i = 0; i < g_.SinkEnd(length); ++i) {
    CHECK(allocator.AddRef(by_index[i]).ok());
    sink_.push_back(by_index[i]);
  }
  if (length <= g_.ring_start()) return;
  slots_.assign(g_.prefill_slots, kNoPage);
  const int64_t end = CeilDiv(length, g_.page_size);
  for (int64_t i = std::max(g_.sink_pages, g_.WindowBegin(length)); i < end; ++i) {
    CHECK(allocator.AddRef(by_index[i]).ok());
    slots_[(i - g_.sink_pages) % num_slots()] = by_index[i];
  }
}

void StreamingRing::Restore(bool decoding, std::span<const std::pair<int64_t, PageId>> held) {
  CHECK(sink_.empty() && slots_.empty());
  decoding_ = decoding;
  for (const auto& [index, page] : held) {
    if (index < g_.sink_pages) {
      CHECK_EQ(index, static_cast<int64_t>(sink_.size()));
      sink_.push_back(page);
      continue;
    }
    if (slots_.empty()) slots_.assign(SlotCount(decoding_), kNoPage);
    slots_[(index - g_.sink_pages) % num_slots()] = page;
  }
}

}  // namespace lserve
