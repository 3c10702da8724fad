// Host page tables of every sequence for both pools (DESIGN.md §3, hierarchical paging):
// a sequence's dense pages grow with its length; its streaming pages are a StreamingRing.
// One page id addresses the same page in every layer of its pool. Backend-neutral: this
// class holds no KV data, only page ids, and exports a batch as PageTableArrays.
#ifndef LSERVE_KVSTORE_PAGE_TABLES_H_
#define LSERVE_KVSTORE_PAGE_TABLES_H_

#include <cstdint>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvstore/kv_store_config.h"
#include "kvstore/page_allocator.h"
#include "kvstore/page_table_arrays.h"
#include "kvstore/streaming_ring.h"

namespace lserve {

using SeqId = int64_t;

enum class KvPoolKind { kDense, kStreaming };

struct PageCounts {
  int64_t dense = 0;
  int64_t streaming = 0;
};

// Gives pages back when a pool runs short: the prefix cache drops references it holds.
class PageReclaimer {
 public:
  virtual ~PageReclaimer() = default;
  // Pages of `pool` that Reclaim could return to the free list.
  virtual int64_t Reclaimable(KvPoolKind pool) const = 0;
  // Returns up to `pages` pages of `pool` to the free list; how many it returned.
  virtual int64_t Reclaim(KvPoolKind pool, int64_t pages) = 0;
};

// One sequence of an exported batch: its tokens once the step's tokens are in.
struct BatchSequence {
  SeqId seq = 0;
  int64_t kv_len = 0;
};

class KvPageTables {
 public:
  // `config` must be valid and its layout filled in.
  explicit KvPageTables(const KvStoreConfig& config);

  const KvStoreConfig& config() const { return config_; }
  const RingGeometry& ring_geometry() const { return ring_geometry_; }
  bool has_dense() const { return has_dense_; }
  bool has_streaming() const { return has_streaming_; }

  absl::Status AddSequence(SeqId seq);
  // Releases every page the sequence holds.
  absl::Status FreeSequence(SeqId seq);
  bool HasSequence(SeqId seq) const { return sequences_.count(seq) > 0; }
  absl::StatusOr<int64_t> Length(SeqId seq) const;
  int64_t num_sequences() const { return static_cast<int64_t>(sequences_.size()); }
  std::vector<SeqId> Sequences() const;

  // Pages of each pool that Extend(seq, num_tokens, decode) would newly take.
  absl::StatusOr<PageCounts> PagesNeeded(SeqId seq, int64_t num_tokens, bool decode) const;
  // Pages of each pool a sequence of `tokens` tokens holds at most.
  PageCounts MaxPagesFor(int64_t tokens) const;
  // Free pages plus those the reclaimer can return.
  PageCounts Available() const;
  PageCounts Capacity() const;

  // Makes room for num_tokens more tokens, all or nothing (RESOURCE_EXHAUSTED leaves the
  // sequence untouched). `decode` switches the streaming ring to the decode window for
  // good; a decode step appends exactly one token, and no prefill may follow it.
  absl::Status Extend(SeqId seq, int64_t num_tokens, bool decode);
  // Marks the tokens written by the step as part of the sequence.
  absl::Status Commit(SeqId seq, int64_t num_tokens);

  // Appends the sequences' tables to `arrays` (after arrays->Clear()).
  void ExportBatch(std::span<const BatchSequence> batch, PageTableArrays* arrays) const;

  const std::vector<PageId>& DensePages(SeqId seq) const;
  const StreamingRing& Ring(SeqId seq) const;
  int64_t StreamingPagesHeld(SeqId seq) const;
  // The page holding page index `index` of the sequence's committed tokens, or kNoPage.
  PageId DensePageAt(SeqId seq, int64_t index) const;
  PageId StreamingPageAt(SeqId seq, int64_t index) const;

  // Starts a fresh sequence from shared pages of a cached prefix of `tokens` tokens (a
  // multiple of the page size): dense[i] and streaming[i] are the pages of index i (the
  // streaming ones only where StreamingRing::AttachPrefix needs them).
  absl::Status AttachPrefix(SeqId seq, int64_t tokens, std::span<const PageId> dense,
                            std::span<const PageId> streaming);
  // Starts a fresh sequence from freshly allocated pages (an import): dense pages in
  // order, streaming pages with their page indices.
  absl::Status RestoreSequence(SeqId seq, int64_t length, bool decoding, std::vector<PageId> dense,
                               std::span<const std::pair<int64_t, PageId>> streaming);

  PageAllocator& allocator(KvPoolKind pool) {
    return pool == KvPoolKind::kDense ? dense_allocator_ : streaming_allocator_;
  }
  const PageAllocator& dense_allocator() const { return dense_allocator_; }
  const PageAllocator& streaming_allocator() const { return streaming_allocator_; }
  void set_reclaimer(PageReclaimer* reclaimer) { reclaimer_ = reclaimer; }

 private:
  struct Sequence {
    explicit Sequence(const RingGeometry& geometry) : ring(geometry) {}
    int64_t length = 0;    // committed tokens
    int64_t reserved = 0;  // tokens with storage
    std::vector<PageId> dense_pages;
    StreamingRing ring;
  };

  absl::StatusOr<const Sequence*> Find(SeqId seq) const;
  PageCounts NeededFor(const Sequence& s, int64_t num_tokens, bool decode) const;
  absl::Status ReclaimFor(const Sequence& s, int64_t num_tokens, bool decode);

  KvStoreConfig config_;
  RingGeometry ring_geometry_;
  bool has_dense_ = false;
  bool has_streaming_ = false;
  PageAllocator dense_allocator_;
  PageAllocator streaming_allocator_;
  PageReclaimer* reclaimer_ = nullptr;
  std::unordered_map<SeqId, Sequence> sequences_;
};

}  // namespace lserve

#endif  // LSERVE_KVSTORE_PAGE_TABLES_H_
