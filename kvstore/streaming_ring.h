// Streaming-head storage of one sequence (DESIGN.md §3): the sink pages plus a ring of
// local pages, so the streaming pool holds a constant number of pages per sequence.
//
// Page index i of a sequence holds positions [i*P, (i+1)*P). Indices below sink_pages are
// sink pages; index i >= sink_pages is ring page lp = i - sink_pages and lives in slot
// lp % slots. While prefilling the ring has prefill_slots slots (the prefill window plus
// one chunk); entering decode shrinks it to decode_slots for good.
//
// Pages may be shared (prefix caching): a slot whose page another holder still references
// is never written again; reusing that slot takes a fresh page (copy on write).
#ifndef LSERVE_KVSTORE_STREAMING_RING_H_
#define LSERVE_KVSTORE_STREAMING_RING_H_

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "kvstore/kv_store_config.h"
#include "kvstore/page_allocator.h"

namespace lserve {

struct RingGeometry {
  int64_t page_size = 0;
  int64_t sink_pages = 0;     // ceil(sink / P)
  int64_t prefill_slots = 0;  // ceil((prefill_local + max_chunk) / P) + 1
  int64_t decode_slots = 0;   // ceil(decode_local / P) + 1
  int64_t prefill_local = 0;
  int64_t decode_local = 0;

  static RingGeometry For(const KvStoreConfig& config);
  // First position the ring stores: the sink pages hold everything before it.
  int64_t ring_start() const { return sink_pages * page_size; }
  // Most pages a sequence of `tokens` tokens holds.
  int64_t MaxPagesFor(int64_t tokens) const;
  // Page indices a sequence of `length` tokens must hold so that the next prefill chunk
  // sees its whole window: [0, sink_end) and [window_begin, ceil(length / P)).
  int64_t SinkEnd(int64_t length) const;
  int64_t WindowBegin(int64_t length) const;
};

class StreamingRing {
 public:
  explicit StreamingRing(const RingGeometry& geometry) : g_(geometry) {}

  // Pages the allocator must newly provide to store [length, new_len) (net of pages that
  // entering decode frees). `decode` as in Grow.
  int64_t PagesNeeded(const PageAllocator& allocator, int64_t length, int64_t new_len,
                      bool decode) const;
  // Makes room for [length, new_len); the allocator must hold PagesNeeded free pages.
  // `decode` switches to the decode ring for good.
  void Grow(PageAllocator& allocator, int64_t length, int64_t new_len, bool decode);
  // Where position `pos` lives: (page, row).
  std::pair<PageId, int32_t> Location(int64_t pos) const;
  // The page holding page index `index` of a sequence of `length` tokens, or kNoPage when
  // the ring no longer (or never) held it.
  PageId PageAtIndex(int64_t index, int64_t length) const;
  // Every held page with its page index, ascending.
  std::vector<std::pair<int64_t, PageId>> HeldPages(int64_t length) const;
  void Release(PageAllocator& allocator);

  // Starts an empty ring from shared pages of a cached prefix of `length` tokens:
  // `by_index[i]` is the page of index i; the sink and window indices must be present.
  void AttachPrefix(PageAllocator& allocator, int64_t length, std::span<const PageId> by_index);
  // Rebuilds an empty ring from pages of the given indices (an imported sequence).
  void Restore(bool decoding, std::span<const std::pair<int64_t, PageId>> held);

  int64_t PagesHeld() const;
  bool decoding() const { return decoding_; }
  const std::vector<PageId>& sink_pages() const { return sink_; }
  const std::vector<PageId>& slots() const { return slots_; }
  int64_t num_slots() const;

 private:
  int64_t SlotCount(bool decoding) const { return decoding ? g_.decode_slots : g_.prefill_slots; }
  // The decode ring a sequence of new_len tokens switches to.
  std::vector<PageId> ShrunkSlots(int64_t length, int64_t new_len) const;
  int64_t RingPagesNeeded(const PageAllocator& allocator, const std::vector<PageId>& slots,
                          int64_t num_slots, int64_t length, int64_t new_len) const;

  RingGeometry g_;
  std::vector<PageId> sink_;
  std::vector<PageId> slots_;  // slot -> page, kNoPage when empty
  bool decoding_ = false;
};

}  // namespace lserve

#endif  // LSERVE_KVSTORE_STREAMING_RING_H_
