// Paged KV cache with two pools (DESIGN.md §3, hierarchical paging):
//  * the dense pool holds the KV of dense heads; a sequence owns ceil(len / P) pages and
//    every logical page (L tokens) keeps channel-wise kmax/kmin of its post-RoPE keys;
//  * the streaming pool holds the KV of streaming heads: the sink pages plus a ring of
//    local pages, so its size per sequence is constant.
// One page id addresses the same page in every layer of its pool, so a sequence has one
// dense page table and one streaming page table shared by all layers.
#ifndef LSERVE_KVSTORE_PAGED_KV_CACHE_H_
#define LSERVE_KVSTORE_PAGED_KV_CACHE_H_

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/attention.h"
#include "kvstore/head_layout.h"
#include "kvstore/page_allocator.h"

namespace lserve {

using SeqId = int64_t;

struct KvCacheConfig {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int page_size = 64;          // P: tokens per physical page
  int logical_page_size = 16;  // L: tokens per logical page (statistics granularity)
  int64_t num_dense_pages = 0;
  int64_t num_streaming_pages = 0;
  HeadLayout layout;  // empty means every head is dense
  // Streaming windows: sink tokens plus the local window during prefill and decode.
  int64_t sink = 128;
  int64_t prefill_local = 8192;
  int64_t decode_local = 256;
  // Largest prefill chunk: the prefill ring must cover the window plus one chunk.
  int64_t max_chunk_tokens = 2048;
};

absl::Status ValidateKvCacheConfig(const KvCacheConfig& config);

class PagedKvCache {
 public:
  static absl::StatusOr<std::unique_ptr<PagedKvCache>> Create(KvCacheConfig config);

  const KvCacheConfig& config() const { return config_; }
  const HeadLayout& layout() const { return config_.layout; }

  absl::Status AddSequence(SeqId seq);
  // Releases every page the sequence holds.
  absl::Status FreeSequence(SeqId seq);
  bool HasSequence(SeqId seq) const { return sequences_.count(seq) > 0; }
  absl::StatusOr<int64_t> Length(SeqId seq) const;

  // Pages (dense, streaming) that Extend(seq, num_tokens, decode) would newly take.
  absl::StatusOr<std::pair<int64_t, int64_t>> PagesNeeded(SeqId seq, int64_t num_tokens,
                                                          bool decode) const;
  // Pages of each pool that a sequence of `tokens` tokens holds at most.
  int64_t DensePagesFor(int64_t tokens) const;
  int64_t StreamingPagesFor(int64_t tokens) const;

  // Makes room for num_tokens more tokens, all or nothing (RESOURCE_EXHAUSTED leaves the
  // sequence untouched). `decode` switches the streaming ring to the decode window for
  // good; a decode step appends exactly one token, and no prefill may follow it.
  absl::Status Extend(SeqId seq, int64_t num_tokens, bool decode);
  // Marks the tokens written by the step as part of the sequence.
  absl::Status Commit(SeqId seq, int64_t num_tokens);

  // Writes K/V rows for positions [first_pos, first_pos + n) of one layer. Row i of k/v
  // holds all KV heads (num_kv_heads * head_dim floats, row_stride apart). Positions must
  // be covered by Extend; dense-head page statistics are updated.
  void Write(int layer, SeqId seq, int64_t first_pos, int64_t n, const float* k, const float* v,
             int64_t row_stride);

  // Key spans a query block ending at length `kv_len` (exclusive) may read.
  void DenseSpans(SeqId seq, int64_t kv_len, std::vector<cpu::KvSpan>* spans) const;
  // Dense spans of the listed page indices of the sequence's page table (ascending).
  void SelectedDenseSpans(SeqId seq, int64_t kv_len, const std::vector<int32_t>& page_indices,
                          std::vector<cpu::KvSpan>* spans) const;
  // Sink pages plus the ring pages covering [first_query_pos - local + 1, kv_len).
  void StreamingSpans(SeqId seq, int64_t kv_len, int64_t first_query_pos, int64_t local,
                      std::vector<cpu::KvSpan>* spans) const;

  // Pool storage of one layer: page p, head slot h, row r at
  // base + p * PageStride + h * page_size * head_dim + r * head_dim.
  const float* DenseK(int layer) const { return dense_k_[layer].data(); }
  const float* DenseV(int layer) const { return dense_v_[layer].data(); }
  const float* StreamingK(int layer) const { return streaming_k_[layer].data(); }
  const float* StreamingV(int layer) const { return streaming_v_[layer].data(); }
  int64_t DensePageStride(int layer) const;
  int64_t StreamingPageStride(int layer) const;
  int64_t HeadStride() const { return int64_t{config_.page_size} * config_.head_dim; }

  // Logical-page statistics of dense heads, [page][slot][logical page][head_dim].
  const float* KeyMax(int layer) const { return key_max_[layer].data(); }
  const float* KeyMin(int layer) const { return key_min_[layer].data(); }
  int64_t StatsPageStride(int layer) const;

  const std::vector<PageId>& DensePageTable(SeqId seq) const;
  // Streaming pages the sequence holds now (sink + occupied ring slots).
  int64_t StreamingPagesHeld(SeqId seq) const;

  const PageAllocator& dense_allocator() const { return dense_allocator_; }
  const PageAllocator& streaming_allocator() const { return streaming_allocator_; }
  bool has_streaming() const { return has_streaming_; }
  int64_t SinkTokensStored() const { return num_sink_pages_ * config_.page_size; }

 private:
  struct Sequence {
    int64_t length = 0;    // committed tokens
    int64_t reserved = 0;  // tokens with storage
    std::vector<PageId> dense_pages;
    std::vector<PageId> sink_pages;
    std::vector<PageId> ring;  // slot -> page, kNoPage when empty
    bool decode_ring = false;
  };

  explicit PagedKvCache(KvCacheConfig config);
  void AllocateStorage();  // may throw std::bad_alloc
  int64_t RingSlots(bool decode) const;
  // Where a streaming token lives: (page, row).
  std::pair<PageId, int32_t> StreamingLocation(const Sequence& s, int64_t pos) const;
  std::vector<PageId> ShrunkRing(const Sequence& s, int64_t new_len) const;
  void ShrinkRingForDecode(Sequence& s, int64_t new_len);
  int64_t RingPagesNeeded(const Sequence& s, int64_t new_len, bool decode) const;
  void UpdateStats(int layer, PageId page, int32_t row, int slot, const float* key);

  KvCacheConfig config_;
  bool has_streaming_ = false;
  bool has_dense_ = false;
  int64_t num_sink_pages_ = 0;
  PageAllocator dense_allocator_;
  PageAllocator streaming_allocator_;
  std::vector<std::vector<float>> dense_k_, dense_v_, streaming_k_, streaming_v_;
  std::vector<std::vector<float>> key_max_, key_min_;
  std::unordered_map<SeqId, Sequence> sequences_;
};

}  // namespace lserve

#endif  // LSERVE_KVSTORE_PAGED_KV_CACHE_H_
