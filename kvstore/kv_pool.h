// Storage of one KV pool (dense or streaming heads) for every layer, in one allocation of
// a MemorySpace (host memory, or device memory through a backend).
//
// Layout. Layer l occupies num_pages * page_bytes(l) bytes from layer_offset(l); page p of
// layer l is ONE contiguous run at layer_offset(l) + p * page_bytes(l), in elements of
// the pool's dtype:
//     K      [heads(l)][P][D]
//     V      [heads(l)][P][D]
//     kmax   [heads(l)][P/L][D]   (dense pool only: logical-page key statistics)
//     kmin   [heads(l)][P/L][D]   (dense pool only)
// where heads(l) is the number of the layer's KV heads in this pool and a head's index
// among them is its slot. A page of all layers is therefore num_layers runs, so a
// transfer moves a page list without gathering.
#ifndef LSERVE_KVSTORE_KV_POOL_H_
#define LSERVE_KVSTORE_KV_POOL_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/memory_space.h"
#include "kernels/dtype.h"
#include "kvstore/page_allocator.h"

namespace lserve {

struct KvPoolGeometry {
  DType dtype = DType::kF32;
  int page_size = 0;
  int logical_page_size = 0;
  int head_dim = 0;
  bool with_stats = false;
  std::vector<int> heads;  // per layer
  int64_t num_pages = 0;
};

class KvPool {
 public:
  KvPool() = default;
  static absl::StatusOr<KvPool> Create(const KvPoolGeometry& geometry, MemorySpace* space);

  const KvPoolGeometry& geometry() const { return geometry_; }
  int num_layers() const { return static_cast<int>(geometry_.heads.size()); }
  int64_t num_pages() const { return geometry_.num_pages; }
  MemorySpace* space() const { return buffer_.space(); }

  // Base of layer `layer` (element type: the pool's dtype).
  void* LayerBase(int layer) const;
  // Elements from one page of the layer to the next.
  int64_t PageStride(int layer) const { return page_elements_[layer]; }
  // Element offsets inside a page of the layer.
  int64_t KeyOffset(int slot) const;
  int64_t ValueOffset(int layer, int slot) const;
  int64_t KeyMaxOffset(int layer, int slot) const;
  int64_t KeyMinOffset(int layer, int slot) const;
  int64_t HeadStride() const { return int64_t{geometry_.page_size} * geometry_.head_dim; }

  size_t PageBytes(int layer) const { return page_elements_[layer] * DTypeSize(geometry_.dtype); }
  // Bytes of one page over all layers.
  size_t PageBytesAllLayers() const { return page_bytes_all_layers_; }
  // Copies the page's runs of every layer to or from `bytes` (PageBytesAllLayers long,
  // layer after layer).
  absl::Status ReadPage(PageId page, uint8_t* bytes) const;
  absl::Status WritePage(PageId page, const uint8_t* bytes);
  // Copies page `from` onto page `to` in every layer.
  absl::Status CopyPage(PageId from, PageId to);

 private:
  KvPoolGeometry geometry_;
  Buffer buffer_;
  std::vector<int64_t> page_elements_;  // per layer
  std::vector<size_t> layer_offset_;    // bytes
  size_t page_bytes_all_layers_ = 0;
};

}  // namespace lserve

#endif  // LSERVE_KVSTORE_KV_POOL_H_
