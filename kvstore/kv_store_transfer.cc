// Export and import of whole sequences: as bytes (swap, the gRPC hand-off) or as the
// pages that hold them (a device transport fills or reads the pools directly).
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "kvstore/kv_store.h"

namespace lserve {

absl::StatusOr<KvPageExport> KvStore::ExportPages(SeqId seq, int64_t pending_tokens) const {
  absl::StatusOr<int64_t> length = tables_.Length(seq);
  if (!length.ok()) return length.status();
  *length += pending_tokens;
  KvPageExport out;
  KvSnapshot& manifest = out.manifest;
  manifest.shape = shape();
  manifest.length = *length;
  const StreamingRing& ring = tables_.Ring(seq);
  manifest.decoding = ring.decoding();
  const int64_t p = config().page_size;
  if (tables_.has_dense()) {
    manifest.num_dense_pages = (*length + p - 1) / p;
    const auto& pages = tables_.DensePages(seq);
    if (manifest.num_dense_pages > static_cast<int64_t>(pages.size())) {
      return absl::FailedPreconditionError(
          absl::StrCat("sequence ", seq, " has no pages for ", pending_tokens, " more tokens"));
    }
    out.pages.dense.assign(pages.begin(), pages.begin() + manifest.num_dense_pages);
  }
  if (tables_.has_streaming()) {
    for (const auto& [index, page] : ring.HeldPages(*length)) {
      manifest.streaming_indices.push_back(index);
      out.pages.streaming.push_back(page);
    }
  }
  return out;
}

absl::StatusOr<KvSnapshot> KvStore::ExportSequence(SeqId seq) const {
  absl::StatusOr<KvPageExport> exported = ExportPages(seq);
  if (!exported.ok()) return exported.status();
  KvSnapshot snapshot = std::move(exported->manifest);
  const KvPlacement& pages = exported->pages;
  const size_t dense_page_bytes = dense_pool_.PageBytesAllLayers();
  snapshot.dense_bytes.resize(pages.dense.size() * dense_page_bytes);
  for (size_t i = 0; i < pages.dense.size(); ++i) {
    RETURN_IF_ERROR(
        dense_pool_.ReadPage(pages.dense[i], snapshot.dense_bytes.data() + i * dense_page_bytes));
  }
  const size_t streaming_page_bytes = streaming_pool_.PageBytesAllLayers();
  snapshot.streaming_bytes.resize(pages.streaming.size() * streaming_page_bytes);
  for (size_t i = 0; i < pages.streaming.size(); ++i) {
    RETURN_IF_ERROR(streaming_pool_.ReadPage(
        pages.streaming[i], snapshot.streaming_bytes.data() + i * streaming_page_bytes));
  }
  return snapshot;
}

absl::Status KvStore::CheckManifest(const KvSnapshot& snapshot, bool with_bytes) const {
  RETURN_IF_ERROR(CheckCompatible(snapshot.shape, shape()));
  const int64_t p = config().page_size;
  const int64_t streaming_pages = static_cast<int64_t>(snapshot.streaming_indices.size());
  const bool pages_fit =
      snapshot.length >= 0 &&
      snapshot.num_dense_pages == (tables_.has_dense() ? (snapshot.length + p - 1) / p : 0) &&
      std::is_sorted(snapshot.streaming_indices.begin(), snapshot.streaming_indices.end()) &&
      std::adjacent_find(snapshot.streaming_indices.begin(), snapshot.streaming_indices.end()) ==
          snapshot.streaming_indices.end() &&
      (streaming_pages == 0 || (snapshot.streaming_indices.front() >= 0 &&
                                snapshot.streaming_indices.back() * p < snapshot.length));
  const bool bytes_fit =
      with_bytes ? snapshot.dense_bytes.size() ==
                           snapshot.num_dense_pages * dense_pool_.PageBytesAllLayers() &&
                       snapshot.streaming_bytes.size() ==
                           streaming_pages * streaming_pool_.PageBytesAllLayers()
                 : snapshot.dense_bytes.empty() && snapshot.streaming_bytes.empty();
  if (!pages_fit || !bytes_fit) return absl::InvalidArgumentError("KV snapshot is malformed");
  return absl::OkStatus();
}

absl::StatusOr<KvPlacement> KvStore::ImportPages(SeqId seq, const KvSnapshot& manifest) {
  RETURN_IF_ERROR(CheckManifest(manifest, /*with_bytes=*/false));
  if (tables_.HasSequence(seq)) {
    return absl::AlreadyExistsError(absl::StrCat("sequence ", seq, " already has a KV cache"));
  }
  const int64_t streaming_pages = static_cast<int64_t>(manifest.streaming_indices.size());
  PageAllocator& dense_alloc = tables_.allocator(KvPoolKind::kDense);
  PageAllocator& streaming_alloc = tables_.allocator(KvPoolKind::kStreaming);
  if (prefix_cache_ != nullptr) {
    if (manifest.num_dense_pages > dense_alloc.num_free()) {
      prefix_cache_->Reclaim(KvPoolKind::kDense, manifest.num_dense_pages - dense_alloc.num_free());
    }
    if (streaming_pages > streaming_alloc.num_free()) {
      prefix_cache_->Reclaim(KvPoolKind::kStreaming, streaming_pages - streaming_alloc.num_free());
    }
  }
  if (manifest.num_dense_pages > dense_alloc.num_free() ||
      streaming_pages > streaming_alloc.num_free()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("KV cache is full: the sequence needs ", manifest.num_dense_pages,
                     " dense and ", streaming_pages, " streaming pages, ", dense_alloc.num_free(),
                     " and ", streaming_alloc.num_free(), " are free"));
  }
  KvPlacement placement;
  placement.dense = *dense_alloc.AllocateMany(manifest.num_dense_pages);
  placement.streaming = *streaming_alloc.AllocateMany(streaming_pages);
  std::vector<std::pair<int64_t, PageId>> held;
  for (size_t i = 0; i < placement.streaming.size(); ++i) {
    held.emplace_back(manifest.streaming_indices[i], placement.streaming[i]);
  }
  // The tables take over the allocations' references.
  CHECK(tables_.AddSequence(seq).ok());
  CHECK(
      tables_.RestoreSequence(seq, manifest.length, manifest.decoding, placement.dense, held).ok());
  return placement;
}

absl::Status KvStore::ImportSequence(SeqId seq, const KvSnapshot& snapshot) {
  RETURN_IF_ERROR(CheckManifest(snapshot, /*with_bytes=*/true));
  KvSnapshot manifest;
  manifest.shape = snapshot.shape;
  manifest.length = snapshot.length;
  manifest.decoding = snapshot.decoding;
  manifest.num_dense_pages = snapshot.num_dense_pages;
  manifest.streaming_indices = snapshot.streaming_indices;
  absl::StatusOr<KvPlacement> placement = ImportPages(seq, manifest);
  if (!placement.ok()) return placement.status();
  const size_t dense_page_bytes = dense_pool_.PageBytesAllLayers();
  const size_t streaming_page_bytes = streaming_pool_.PageBytesAllLayers();
  absl::Status written = absl::OkStatus();
  for (size_t i = 0; written.ok() && i < placement->dense.size(); ++i) {
    written = dense_pool_.WritePage(placement->dense[i],
                                    snapshot.dense_bytes.data() + i * dense_page_bytes);
  }
  for (size_t i = 0; written.ok() && i < placement->streaming.size(); ++i) {
    written = streaming_pool_.WritePage(placement->streaming[i],
                                        snapshot.streaming_bytes.data() + i * streaming_page_bytes);
  }
  if (!written.ok()) CHECK(FreeSequence(seq).ok());
  return written;
}

}  // namespace lserve
