#include "kvstore/page_tables.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace lserve {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

absl::Status NoSequence(SeqId seq) {
  return absl::NotFoundError(absl::StrCat("sequence ", seq, " has no KV cache"));
}

}  // namespace

KvPageTables::KvPageTables(const KvStoreConfig& config)
    : config_(config),
      ring_geometry_(RingGeometry::For(config)),
      has_dense_(config.layout.TotalDenseHeads() > 0),
      has_streaming_(config.layout.TotalStreamingHeads() > 0),
      dense_allocator_(config.num_dense_pages),
      streaming_allocator_(config.num_streaming_pages) {}

absl::StatusOr<const KvPageTables::Sequence*> KvPageTables::Find(SeqId seq) const {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) return NoSequence(seq);
  return &it->second;
}

absl::Status KvPageTables::AddSequence(SeqId seq) {
  if (!sequences_.try_emplace(seq, ring_geometry_).second) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", seq, " already has a KV cache"));
  }
  return absl::OkStatus();
}

absl::Status KvPageTables::FreeSequence(SeqId seq) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) return NoSequence(seq);
  // Last page first: the free list hands pages out last in, first out, so the next
  // sequence gets them back in ascending runs (fewer, longer ranges for a KV transfer).
  const std::vector<PageId>& dense = it->second.dense_pages;
  for (auto page = dense.rbegin(); page != dense.rend(); ++page) {
    CHECK(dense_allocator_.Release(*page).ok());
  }
  it->second.ring.Release(streaming_allocator_);
  sequences_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> KvPageTables::Length(SeqId seq) const {
  auto s = Find(seq);
  if (!s.ok()) return s.status();
  return (*s)->length;
}

std::vector<SeqId> KvPageTables::Sequences() const {
  std::vector<SeqId> seqs;
  for (const auto& [seq, s] : sequences_) seqs.push_back(seq);
  std::sort(seqs.begin(), seqs.end());
  return seqs;
}

PageCounts KvPageTables::NeededFor(const Sequence& s, int64_t num_tokens, bool decode) const {
  const int64_t new_len = s.length + num_tokens;
  PageCounts needed;
  if (has_dense_) {
    needed.dense = std::max<int64_t>(
        0, CeilDiv(new_len, config_.page_size) - static_cast<int64_t>(s.dense_pages.size()));
  }
  if (has_streaming_) {
    needed.streaming = s.ring.PagesNeeded(streaming_allocator_, s.length, new_len, decode);
  }
  return needed;
}

absl::StatusOr<PageCounts> KvPageTables::PagesNeeded(SeqId seq, int64_t num_tokens,
                                                     bool decode) const {
  auto s = Find(seq);
  if (!s.ok()) return s.status();
  return NeededFor(**s, num_tokens, decode);
}

PageCounts KvPageTables::MaxPagesFor(int64_t tokens) const {
  PageCounts pages;
  if (has_dense_) pages.dense = CeilDiv(tokens, config_.page_size);
  if (has_streaming_) pages.streaming = ring_geometry_.MaxPagesFor(tokens);
  return pages;
}

PageCounts KvPageTables::Available() const {
  PageCounts available{dense_allocator_.num_free(), streaming_allocator_.num_free()};
  if (reclaimer_ != nullptr) {
    available.dense += reclaimer_->Reclaimable(KvPoolKind::kDense);
    available.streaming += reclaimer_->Reclaimable(KvPoolKind::kStreaming);
  }
  return available;
}

PageCounts KvPageTables::Capacity() const {
  return {dense_allocator_.num_pages(), streaming_allocator_.num_pages()};
}

// Asks the reclaimer for what the free lists lack. Dropping cached references can make
// ring pages exclusive again, which lowers the streaming need, so it is recomputed.
absl::Status KvPageTables::ReclaimFor(const Sequence& s, int64_t num_tokens, bool decode) {
  PageCounts needed = NeededFor(s, num_tokens, decode);
  if (reclaimer_ != nullptr && needed.dense > dense_allocator_.num_free()) {
    reclaimer_->Reclaim(KvPoolKind::kDense, needed.dense - dense_allocator_.num_free());
    needed = NeededFor(s, num_tokens, decode);
  }
  if (reclaimer_ != nullptr && needed.streaming > streaming_allocator_.num_free()) {
    reclaimer_->Reclaim(KvPoolKind::kStreaming, needed.streaming - streaming_allocator_.num_free());
    needed = NeededFor(s, num_tokens, decode);
  }
  if (needed.dense > dense_allocator_.num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("dense KV pool is full: need ", needed.dense,
                                                     " pages, ", dense_allocator_.num_free(),
                                                     " free"));
  }
  if (needed.streaming > streaming_allocator_.num_free()) {
    return absl::ResourceExhaustedError(absl::StrCat("streaming KV pool is full: need ",
                                                     needed.streaming, " pages, ",
                                                     streaming_allocator_.num_free(), " free"));
  }
  return absl::OkStatus();
}

absl::Status KvPageTables::Extend(SeqId seq, int64_t num_tokens, bool decode) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) return NoSequence(seq);
  Sequence& s = it->second;
  if (num_tokens <= 0) return absl::InvalidArgumentError("Extend needs at least one token");
  if (decode && num_tokens != 1) {
    return absl::InvalidArgumentError("a decode step appends exactly one token");
  }
  if (has_streaming_ && s.ring.decoding() && !decode) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sequence ", seq, " is decoding: its streaming ring no longer holds a prefill window"));
  }
  if (!decode && num_tokens > config_.max_chunk_tokens && has_streaming_) {
    return absl::InvalidArgumentError(absl::StrCat("prefill chunk of ", num_tokens,
                                                   " tokens exceeds max_chunk_tokens ",
                                                   config_.max_chunk_tokens));
  }
  s.reserved = s.length;  // storage past the committed length from a failed step is reused
  if (absl::Status status = ReclaimFor(s, num_tokens, decode); !status.ok()) return status;
  const int64_t new_len = s.length + num_tokens;
  while (has_dense_ &&
         static_cast<int64_t>(s.dense_pages.size()) < CeilDiv(new_len, config_.page_size)) {
    s.dense_pages.push_back(*dense_allocator_.Allocate());
  }
  if (has_streaming_) s.ring.Grow(streaming_allocator_, s.length, new_len, decode);
  s.reserved = new_len;
  return absl::OkStatus();
}

absl::Status KvPageTables::Commit(SeqId seq, int64_t num_tokens) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) return NoSequence(seq);
  if (num_tokens < 0 || it->second.length + num_tokens > it->second.reserved) {
    return absl::FailedPreconditionError("Commit past the reserved length");
  }
  it->second.length += num_tokens;
  return absl::OkStatus();
}

void KvPageTables::ExportBatch(std::span<const BatchSequence> batch,
                               PageTableArrays* arrays) const {
  const int32_t p = config_.page_size;
  arrays->page_size = p;
  arrays->ring_start = static_cast<int32_t>(ring_geometry_.ring_start());
  for (const BatchSequence& entry : batch) {
    const Sequence& s = sequences_.at(entry.seq);
    CHECK_LE(entry.kv_len, s.reserved) << "sequence " << entry.seq;
    const int32_t kv_len = static_cast<int32_t>(entry.kv_len);
    arrays->kv_len.push_back(kv_len);
    if (has_dense_) {
      const int64_t pages = CeilDiv(kv_len, p);
      arrays->dense_indices.insert(arrays->dense_indices.end(), s.dense_pages.begin(),
                                   s.dense_pages.begin() + pages);
    }
    arrays->dense_indptr.push_back(static_cast<int32_t>(arrays->dense_indices.size()));
    arrays->dense_last_page_len.push_back(kv_len == 0 ? 0 : (kv_len - 1) % p + 1);
    const auto& sink = s.ring.sink_pages();
    const auto& slots = s.ring.slots();
    arrays->stream_indices.insert(arrays->stream_indices.end(), sink.begin(), sink.end());
    arrays->stream_indices.insert(arrays->stream_indices.end(), slots.begin(), slots.end());
    arrays->stream_indptr.push_back(static_cast<int32_t>(arrays->stream_indices.size()));
    arrays->stream_sink_pages.push_back(static_cast<int32_t>(sink.size()));
  }
}

const std::vector<PageId>& KvPageTables::DensePages(SeqId seq) const {
  return sequences_.at(seq).dense_pages;
}

const StreamingRing& KvPageTables::Ring(SeqId seq) const { return sequences_.at(seq).ring; }

int64_t KvPageTables::StreamingPagesHeld(SeqId seq) const {
  return sequences_.at(seq).ring.PagesHeld();
}

PageId KvPageTables::DensePageAt(SeqId seq, int64_t index) const {
  const Sequence& s = sequences_.at(seq);
  if (index < 0 || index * config_.page_size >= s.length) return kNoPage;
  return index < static_cast<int64_t>(s.dense_pages.size()) ? s.dense_pages[index] : kNoPage;
}

PageId KvPageTables::StreamingPageAt(SeqId seq, int64_t index) const {
  const Sequence& s = sequences_.at(seq);
  return s.ring.PageAtIndex(index, s.length);
}

absl::Status KvPageTables::AttachPrefix(SeqId seq, int64_t tokens, std::span<const PageId> dense,
                                        std::span<const PageId> streaming) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) return NoSequence(seq);
  Sequence& s = it->second;
  if (s.length != 0 || s.reserved != 0 || !s.dense_pages.empty() || s.ring.PagesHeld() != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("sequence ", seq, " is not empty: a prefix attaches to fresh sequences"));
  }
  if (tokens % config_.page_size != 0) {
    return absl::InvalidArgumentError("a shared prefix covers whole pages");
  }
  const int64_t pages = tokens / config_.page_size;
  if (has_dense_) {
    CHECK_GE(static_cast<int64_t>(dense.size()), pages);
    for (int64_t i = 0; i < pages; ++i) {
      CHECK(dense_allocator_.AddRef(dense[i]).ok());
      s.dense_pages.push_back(dense[i]);
    }
  }
  if (has_streaming_) s.ring.AttachPrefix(streaming_allocator_, tokens, streaming);
  s.length = s.reserved = tokens;
  return absl::OkStatus();
}

absl::Status KvPageTables::RestoreSequence(SeqId seq, int64_t length, bool decoding,
                                           std::vector<PageId> dense,
                                           std::span<const std::pair<int64_t, PageId>> streaming) {
  auto it = sequences_.find(seq);
  if (it == sequences_.end()) return NoSequence(seq);
  Sequence& s = it->second;
  if (s.length != 0 || !s.dense_pages.empty() || s.ring.PagesHeld() != 0) {
    return absl::FailedPreconditionError(absl::StrCat("sequence ", seq, " is not empty"));
  }
  s.dense_pages = std::move(dense);
  s.ring.Restore(decoding, streaming);
  s.length = s.reserved = length;
  return absl::OkStatus();
}

}  // namespace lserve
