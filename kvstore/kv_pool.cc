#include "kvstore/kv_pool.h"

#include "absl/strings/str_cat.h"

namespace lserve {

absl::StatusOr<KvPool> KvPool::Create(const KvPoolGeometry& geometry, MemorySpace* space) {
  if (geometry.page_size <= 0 || geometry.head_dim <= 0 || geometry.num_pages < 0 ||
      (geometry.with_stats &&
       (geometry.logical_page_size <= 0 || geometry.page_size % geometry.logical_page_size != 0))) {
    return absl::InvalidArgumentError("KV pool: bad geometry");
  }
  KvPool pool;
  pool.geometry_ = geometry;
  const int64_t head_elements = int64_t{geometry.page_size} * geometry.head_dim;
  const int64_t stats_elements =
      geometry.with_stats
          ? int64_t{geometry.page_size / geometry.logical_page_size} * geometry.head_dim
          : 0;
  size_t total = 0;
  for (int heads : geometry.heads) {
    const int64_t elements = heads * (2 * head_elements + 2 * stats_elements);
    pool.page_elements_.push_back(elements);
    pool.layer_offset_.push_back(total);
    const size_t page_bytes = elements * DTypeSize(geometry.dtype);
    pool.page_bytes_all_layers_ += page_bytes;
    total += page_bytes * geometry.num_pages;
  }
  absl::StatusOr<Buffer> buffer = Buffer::Allocate(space, total);
  if (!buffer.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot allocate a KV pool of ", geometry.num_pages, " pages (", total, " bytes) in ",
        std::string(space->name()), " memory: ", buffer.status().message()));
  }
  pool.buffer_ = *std::move(buffer);
  return pool;
}

void* KvPool::LayerBase(int layer) const {
  return static_cast<uint8_t*>(buffer_.data()) + layer_offset_[layer];
}

int64_t KvPool::KeyOffset(int slot) const { return slot * HeadStride(); }

int64_t KvPool::ValueOffset(int layer, int slot) const {
  return (geometry_.heads[layer] + slot) * HeadStride();
}

int64_t KvPool::KeyMaxOffset(int layer, int slot) const {
  const int64_t stats =
      int64_t{geometry_.page_size / geometry_.logical_page_size} * geometry_.head_dim;
  return 2 * geometry_.heads[layer] * HeadStride() + slot * stats;
}

int64_t KvPool::KeyMinOffset(int layer, int slot) const {
  const int64_t stats =
      int64_t{geometry_.page_size / geometry_.logical_page_size} * geometry_.head_dim;
  return 2 * geometry_.heads[layer] * HeadStride() + (geometry_.heads[layer] + slot) * stats;
}

absl::Status KvPool::ReadPage(PageId page, uint8_t* bytes) const {
  if (page < 0 || page >= num_pages()) {
    return absl::OutOfRangeError(absl::StrCat("KV pool has no page ", page));
  }
  for (int layer = 0; layer < num_layers(); ++layer) {
    const size_t n = PageBytes(layer);
    const uint8_t* src = static_cast<const uint8_t*>(LayerBase(layer)) + page * n;
    if (absl::Status s = buffer_.space()->CopyToHost(bytes, src, n); !s.ok()) return s;
    bytes += n;
  }
  return absl::OkStatus();
}

absl::Status KvPool::WritePage(PageId page, const uint8_t* bytes) {
  if (page < 0 || page >= num_pages()) {
    return absl::OutOfRangeError(absl::StrCat("KV pool has no page ", page));
  }
  for (int layer = 0; layer < num_layers(); ++layer) {
    const size_t n = PageBytes(layer);
    uint8_t* dst = static_cast<uint8_t*>(LayerBase(layer)) + page * n;
    if (absl::Status s = buffer_.space()->CopyFromHost(dst, bytes, n); !s.ok()) return s;
    bytes += n;
  }
  return absl::OkStatus();
}

absl::Status KvPool::CopyPage(PageId from, PageId to) {
  if (from < 0 || from >= num_pages() || to < 0 || to >= num_pages()) {
    return absl::OutOfRangeError("KV pool page out of range");
  }
  for (int layer = 0; layer < num_layers(); ++layer) {
    const size_t n = PageBytes(layer);
    uint8_t* base = static_cast<uint8_t*>(LayerBase(layer));
    if (absl::Status s = buffer_.space()->Copy(base + to * n, base + from * n, n); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace lserve
