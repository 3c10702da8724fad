#include "kvstore/paged_kv_cache.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace lserve {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

absl::Status ValidateKvCacheConfig(const KvCacheConfig& c) {
  auto invalid = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache config: ", parts...));
  };
  if (c.num_layers <= 0 || c.num_kv_heads <= 0 || c.head_dim <= 0) {
    return invalid("layers, KV heads and head_dim must be positive");
  }
  if (c.page_size <= 0 || c.logical_page_size <= 0 || c.page_size % c.logical_page_size != 0) {
    return invalid("page_size (", c.page_size, ") must be a positive multiple of ",
                   "logical_page_size (", c.logical_page_size, ")");
  }
  if (c.num_dense_pages < 0 || c.num_streaming_pages < 0) return invalid("negative page count");
  if (c.num_dense_pages > INT32_MAX || c.num_streaming_pages > INT32_MAX) {
    return invalid("page count exceeds 2^31");
  }
  if (!c.layout.layers.empty()) {
    if (static_cast<int>(c.layout.layers.size()) != c.num_layers) {
      return invalid("head layout has ", c.layout.layers.size(), " layers, model has ",
                     c.num_layers);
    }
    for (const auto& layer : c.layout.layers) {
      if (static_cast<int>(layer.streaming.size()) != c.num_kv_heads) {
        return invalid("head layout has ", layer.streaming.size(), " heads per layer, model has ",
                       c.num_kv_heads);
      }
    }
  }
  if (c.sink < 0 || c.prefill_local <= 0 || c.decode_local <= 0) {
    return invalid("streaming windows: sink must be >= 0 and local windows > 0");
  }
  if (c.decode_local > c.prefill_local) {
    return invalid("decode_local (", c.decode_local, ") exceeds prefill_local (", c.prefill_local,
                   ")");
  }
  if (c.max_chunk_tokens <= 0) return invalid("max_chunk_tokens must be positive");
  return absl::OkStatus();
}

PagedKvCache::PagedKvCache(KvCacheConfig config)
    : config_(std::move(config)),
      dense_allocator_(config_.num_dense_pages),
      streaming_allocator_(config_.num_streaming_pages) {}

absl::StatusOr<std::unique_ptr<PagedKvCache>> PagedKvCache::Create(KvCacheConfig config) {
  if (config.layout.layers.empty()) {
    config.layout = HeadLayout::AllDense(config.num_layers, config.num_kv_heads);
  }
  if (absl::Status status = ValidateKvCacheConfig(config); !status.ok()) return status;
  auto cache = std::unique_ptr<PagedKvCache>(new PagedKvCache(std::move(config)));
  const KvCacheConfig& c = cache->config_;
  cache->has_streaming_ = c.layout.TotalStreamingHeads() > 0;
  cache->has_dense_ = c.layout.TotalDenseHeads() > 0;
  cache->num_sink_pages_ = CeilDiv(c.sink, c.page_size);
  try {
    cache->AllocateStorage();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate the KV cache: ", c.num_dense_pages, " dense and ",
                     c.num_streaming_pages, " streaming pages do not fit in memory"));
  }
  return cache;
}

void PagedKvCache::AllocateStorage() {
  const KvCacheConfig& c = config_;
  const int64_t head_floats = int64_t{c.page_size} * c.head_dim;
  const int64_t stats_floats = int64_t{c.page_size / c.logical_page_size} * c.head_dim;
  for (int layer = 0; layer < c.num_layers; ++layer) {
    const auto& heads = c.layout.layers[layer];
    const size_t dense = c.num_dense_pages * heads.num_dense * head_floats;
    const size_t streaming = c.num_streaming_pages * heads.num_streaming * head_floats;
    dense_k_.emplace_back(dense);
    dense_v_.emplace_back(dense);
    streaming_k_.emplace_back(streaming);
    streaming_v_.emplace_back(streaming);
    key_max_.emplace_back(c.num_dense_pages * heads.num_dense * stats_floats);
    key_min_.emplace_back(c.num_dense_pages * heads.num_dense * stats_floats);
  }
}

int64_t PagedKvCache::DensePageStride(int layer) const {
  return config_.layout.layers[layer].num_dense * HeadStride();
}
int64_t PagedKvCache::StreamingPageStride(int layer) const {
  return config_.layout.layers[layer].num_streaming * HeadStride();
}
int64_t PagedKvCache::StatsPageStride(int layer) const {
  return int64_t{config_.layout.layers[layer].num_dense} *
         (config_.page_size / config_.logical_page_size) * config_.head_dim;
}

absl::Status PagedKvCache::AddSequence(SeqId seq) {
  if (!sequences_.emplace(seq, Sequence{}).second) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", seq, " already has a KV cache"));
  }
  return absl::OkStatus();
}

absl::Status PagedKvCache::FreeSequence(SeqId seq) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq, " has no KV cache"));
  }
  Sequence& s = it->second;
  for (PageId page : s.dense_pages) CHECK(dense_allocator_.Release(page).ok());
  for (PageId page : s.sink_pages) CHECK(streaming_allocator_.Release(page).ok());
  for (PageId page : s.ring) {
    if (page != kNoPage) CHECK(streaming_allocator_.Release(page).ok());
  }
  sequences_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> PagedKvCache::Length(SeqId seq) const {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq, " has no KV cache"));
  }
  return it->second.length;
}

const std::vector<PageId>& PagedKvCache::DensePageTable(SeqId seq) const {
  return sequences_.at(seq).dense_pages;
}

int64_t PagedKvCache::StreamingPagesHeld(SeqId seq) const {
  const Sequence& s = sequences_.at(seq);
  return static_cast<int64_t>(s.sink_pages.size()) +
         std::count_if(s.ring.begin(), s.ring.end(), [](PageId p) { return p != kNoPage; });
}

int64_t PagedKvCache::DensePagesFor(int64_t tokens) const {
  return has_dense_ ? CeilDiv(tokens, config_.page_size) : 0;
}

int64_t PagedKvCache::StreamingPagesFor(int64_t tokens) const {
  if (!has_streaming_) return 0;
  return std::min(CeilDiv(tokens, config_.page_size), num_sink_pages_ + RingSlots(false));
}

int64_t PagedKvCache::RingSlots(bool decode) const {
  const int64_t local =
      decode ? config_.decode_local : config_.prefill_local + config_.max_chunk_tokens;
  return CeilDiv(local, config_.page_size) + 1;
}

std::pair<PageId, int32_t> PagedKvCache::StreamingLocation(const Sequence& s, int64_t pos) const {
  const int64_t p = config_.page_size;
  const int64_t sink_tokens = SinkTokensStored();
  if (pos < sink_tokens) return {s.sink_pages[pos / p], static_cast<int32_t>(pos % p)};
  const int64_t offset = pos - sink_tokens;
  const int64_t slot = (offset / p) % static_cast<int64_t>(s.ring.size());
  return {s.ring[slot], static_cast<int32_t>(offset % p)};
}

// New ring pages needed to store tokens [length, new_len). Occupied slots are reused in
// place once the ring wraps.
int64_t PagedKvCache::RingPagesNeeded(const Sequence& s, int64_t new_len, bool decode) const {
  const int64_t sink_tokens = SinkTokensStored();
  if (new_len <= sink_tokens) return 0;
  const int64_t p = config_.page_size;
  const int64_t slots = s.ring.empty() ? RingSlots(decode) : static_cast<int64_t>(s.ring.size());
  const int64_t first_lp = s.length <= sink_tokens ? 0 : (s.length - sink_tokens) / p;
  const int64_t last_lp = (new_len - 1 - sink_tokens) / p;
  std::vector<bool> counted(slots, false);
  int64_t needed = 0;
  for (int64_t lp = first_lp; lp <= last_lp; ++lp) {
    const int64_t slot = lp % slots;
    if (counted[slot]) continue;
    counted[slot] = true;
    if (s.ring.empty() || s.ring[slot] == kNoPage) ++needed;
  }
  return needed;
}

absl::StatusOr<std::pair<int64_t, int64_t>> PagedKvCache::PagesNeeded(SeqId seq, int64_t num_tokens,
                                                                      bool decode) const {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq, " has no KV cache"));
  }
  const Sequence& s = it->second;
  const int64_t new_len = s.length + num_tokens;
  const int64_t p = config_.page_size;
  const int64_t dense =
      has_dense_
          ? std::max<int64_t>(0, CeilDiv(new_len, p) - static_cast<int64_t>(s.dense_pages.size()))
          : 0;
  if (!has_streaming_) return std::make_pair(dense, int64_t{0});
  const int64_t sink = std::max<int64_t>(0, std::min(num_sink_pages_, CeilDiv(new_len, p)) -
                                                static_cast<int64_t>(s.sink_pages.size()));
  int64_t ring = 0;
  if (decode && !s.decode_ring) {
    // Entering decode shrinks the ring first; the pages it frees serve the new token.
    Sequence shrunk = s;
    shrunk.ring = ShrunkRing(s, new_len);
    shrunk.decode_ring = true;
    const auto occupied = [](const std::vector<PageId>& r) {
      return std::count_if(r.begin(), r.end(), [](PageId page) { return page != kNoPage; });
    };
    const int64_t freed = occupied(s.ring) - occupied(shrunk.ring);
    ring = std::max<int64_t>(0, RingPagesNeeded(shrunk, new_len, true) - freed);
  } else {
    ring = RingPagesNeeded(s, new_len, s.decode_ring);
  }
  return std::make_pair(dense, sink + ring);
}

// The decode-window ring a sequence of `new_len` tokens switches to: the pages of the
// newest query's window move to their decode slots; the others are left to release.
std::vector<PageId> PagedKvCache::ShrunkRing(const Sequence& s, int64_t new_len) const {
  if (s.ring.empty()) return {};
  const int64_t p = config_.page_size;
  const int64_t sink_tokens = SinkTokensStored();
  const int64_t new_slots = RingSlots(/*decode=*/true);
  const int64_t old_slots = static_cast<int64_t>(s.ring.size());
  std::vector<PageId> ring(new_slots, kNoPage);
  const int64_t window_start = std::max(sink_tokens, new_len - config_.decode_local);
  if (s.length > sink_tokens && window_start < s.length) {
    const int64_t lp_hi = (s.length - 1 - sink_tokens) / p;
    for (int64_t lp = (window_start - sink_tokens) / p; lp <= lp_hi; ++lp) {
      ring[lp % new_slots] = s.ring[lp % old_slots];
    }
  }
  return ring;
}

void PagedKvCache::ShrinkRingForDecode(Sequence& s, int64_t new_len) {
  std::vector<PageId> ring = ShrunkRing(s, new_len);
  for (PageId page : s.ring) {
    if (page != kNoPage && std::find(ring.begin(), ring.end(), page) == ring.end()) {
      CHECK(streaming_allocator_.Release(page).ok());
    }
  }
  s.ring = std::move(ring);
  s.decode_ring = true;
}

absl::Status PagedKvCache::Extend(SeqId seq, int64_t num_tokens, bool decode) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq, " has no KV cache"));
  }
  Sequence& s = it->second;
  if (num_tokens <= 0) return absl::InvalidArgumentError("Extend needs at least one token");
  if (decode && num_tokens != 1) {
    return absl::InvalidArgumentError("a decode step appends exactly one token");
  }
  if (has_streaming_ && s.decode_ring && !decode) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sequence ", seq, " is decoding: its streaming ring no longer holds a prefill window"));
  }
  if (!decode && num_tokens > config_.max_chunk_tokens && has_streaming_) {
    return absl::InvalidArgumentError(absl::StrCat("prefill chunk of ", num_tokens,
                                                   " tokens exceeds max_chunk_tokens ",
                                                   config_.max_chunk_tokens));
  }
  s.reserved = s.length;  // storage past the committed length from a failed step is reused
  auto needed = PagesNeeded(seq, num_tokens, decode);
  if (!needed.ok()) return needed.status();
  if (needed->first > dense_allocator_.num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("dense KV pool is full: need ", needed->first,
                                                     " pages, ", dense_allocator_.num_free(),
                                                     " free"));
  }
  if (needed->second > streaming_allocator_.num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("streaming KV pool is full: need ",
                                                     needed->second, " pages, ",
                                                     streaming_allocator_.num_free(), " free"));
  }
  if (has_streaming_ && decode && !s.decode_ring) ShrinkRingForDecode(s, s.length + 1);
  const int64_t new_len = s.length + num_tokens;
  const int64_t p = config_.page_size;
  while (has_dense_ && static_cast<int64_t>(s.dense_pages.size()) < CeilDiv(new_len, p)) {
    s.dense_pages.push_back(*dense_allocator_.Allocate());
  }
  if (has_streaming_) {
    while (static_cast<int64_t>(s.sink_pages.size()) <
           std::min(num_sink_pages_, CeilDiv(new_len, p))) {
      s.sink_pages.push_back(*streaming_allocator_.Allocate());
    }
    const int64_t sink_tokens = SinkTokensStored();
    if (new_len > sink_tokens) {
      if (s.ring.empty()) s.ring.assign(RingSlots(s.decode_ring), kNoPage);
      const int64_t slots = static_cast<int64_t>(s.ring.size());
      const int64_t first_lp = s.length <= sink_tokens ? 0 : (s.length - sink_tokens) / p;
      for (int64_t lp = first_lp; lp <= (new_len - 1 - sink_tokens) / p; ++lp) {
        if (s.ring[lp % slots] == kNoPage) s.ring[lp % slots] = *streaming_allocator_.Allocate();
      }
    }
  }
  s.reserved = new_len;
  return absl::OkStatus();
}

absl::Status PagedKvCache::Commit(SeqId seq, int64_t num_tokens) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", seq, " has no KV cache"));
  }
  if (it->second.length + num_tokens > it->second.reserved) {
    return absl::FailedPreconditionError("Commit past the reserved length");
  }
  it->second.length += num_tokens;
  return absl::OkStatus();
}

void PagedKvCache::UpdateStats(int layer, PageId page, int32_t row, int slot, const float* key) {
  const int d = config_.head_dim;
  const int logical = row / config_.logical_page_size;
  const int64_t offset =
      page * StatsPageStride(layer) +
      (int64_t{slot} * (config_.page_size / config_.logical_page_size) + logical) * d;
  float* kmax = key_max_[layer].data() + offset;
  float* kmin = key_min_[layer].data() + offset;
  if (row % config_.logical_page_size == 0) {
    std::memcpy(kmax, key, d * sizeof(float));
    std::memcpy(kmin, key, d * sizeof(float));
    return;
  }
  for (int c = 0; c < d; ++c) {
    kmax[c] = std::max(kmax[c], key[c]);
    kmin[c] = std::min(kmin[c], key[c]);
  }
}

void PagedKvCache::Write(int layer, SeqId seq, int64_t first_pos, int64_t n, const float* k,
                         const float* v, int64_t row_stride) {
  const Sequence& s = sequences_.at(seq);
  CHECK_LE(first_pos + n, s.reserved) << "write past the reserved length";
  const int d = config_.head_dim;
  const int64_t p = config_.page_size;
  const LayerHeadLayout& heads = config_.layout.layers[layer];
  for (int64_t i = 0; i < n; ++i) {
    const int64_t pos = first_pos + i;
    for (int h = 0; h < config_.num_kv_heads; ++h) {
      const float* k_src = k + i * row_stride + int64_t{h} * d;
      const float* v_src = v + i * row_stride + int64_t{h} * d;
      const int slot = heads.slot[h];
      int64_t offset;
      float* k_dst;
      float* v_dst;
      if (!heads.streaming[h]) {
        const PageId page = s.dense_pages[pos / p];
        const int32_t row = static_cast<int32_t>(pos % p);
        offset = page * DensePageStride(layer) + slot * HeadStride() + int64_t{row} * d;
        k_dst = dense_k_[layer].data() + offset;
        v_dst = dense_v_[layer].data() + offset;
        UpdateStats(layer, page, row, slot, k_src);
      } else {
        const auto [page, row] = StreamingLocation(s, pos);
        offset = page * StreamingPageStride(layer) + slot * HeadStride() + int64_t{row} * d;
        k_dst = streaming_k_[layer].data() + offset;
        v_dst = streaming_v_[layer].data() + offset;
      }
      std::memcpy(k_dst, k_src, d * sizeof(float));
      std::memcpy(v_dst, v_src, d * sizeof(float));
    }
  }
}

void PagedKvCache::DenseSpans(SeqId seq, int64_t kv_len, std::vector<cpu::KvSpan>* spans) const {
  const Sequence& s = sequences_.at(seq);
  const int64_t p = config_.page_size;
  for (int64_t i = 0; i * p < kv_len; ++i) {
    spans->push_back(
        {s.dense_pages[i], 0, static_cast<int32_t>(std::min(p, kv_len - i * p)), i * p});
  }
}

void PagedKvCache::SelectedDenseSpans(SeqId seq, int64_t kv_len,
                                      const std::vector<int32_t>& page_indices,
                                      std::vector<cpu::KvSpan>* spans) const {
  const Sequence& s = sequences_.at(seq);
  const int64_t p = config_.page_size;
  for (int32_t i : page_indices) {
    if (i * p >= kv_len) continue;
    spans->push_back(
        {s.dense_pages[i], 0, static_cast<int32_t>(std::min(p, kv_len - i * p)), i * p});
  }
}

void PagedKvCache::StreamingSpans(SeqId seq, int64_t kv_len, int64_t first_query_pos, int64_t local,
                                  std::vector<cpu::KvSpan>* spans) const {
  const Sequence& s = sequences_.at(seq);
  const int64_t p = config_.page_size;
  const int64_t sink_tokens = SinkTokensStored();
  for (int64_t i = 0; i < static_cast<int64_t>(s.sink_pages.size()) && i * p < kv_len; ++i) {
    spans->push_back(
        {s.sink_pages[i], 0, static_cast<int32_t>(std::min(p, kv_len - i * p)), i * p});
  }
  const int64_t window_start = std::max(sink_tokens, first_query_pos - local + 1);
  if (window_start >= kv_len) return;
  const int64_t slots = static_cast<int64_t>(s.ring.size());
  for (int64_t lp = (window_start - sink_tokens) / p; lp <= (kv_len - 1 - sink_tokens) / p; ++lp) {
    const int64_t first = sink_tokens + lp * p;
    spans->push_back(
        {s.ring[lp % slots], 0, static_cast<int32_t>(std::min(p, kv_len - first)), first});
  }
}

}  // namespace lserve
