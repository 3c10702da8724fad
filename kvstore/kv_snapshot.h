// A sequence's KV taken out of a store: page tables plus the bytes of every page it
// holds, for preemption by swap and for the disaggregated hand-off. Pages are listed by
// page index (positions [i*P, (i+1)*P)), so the receiving store rebuilds the streaming
// ring slot for slot; page bytes follow the KvPool layout of each layer.
#ifndef LSERVE_KVSTORE_KV_SNAPSHOT_H_
#define LSERVE_KVSTORE_KV_SNAPSHOT_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/dtype.h"
#include "kvstore/kv_store_config.h"

namespace lserve {

// What two stores must agree on to exchange sequences.
struct KvShape {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int page_size = 0;
  int logical_page_size = 0;
  DType dtype = DType::kF32;
  std::vector<uint8_t> streaming;  // [layer * num_kv_heads + head]
  int64_t sink = 0;
  int64_t prefill_local = 0;
  int64_t decode_local = 0;
  int64_t max_chunk_tokens = 0;

  static KvShape Of(const KvStoreConfig& config);
  bool operator==(const KvShape&) const = default;
};

struct KvSnapshot {
  KvShape shape;
  int64_t length = 0;
  bool decoding = false;
  int64_t num_dense_pages = 0;             // page indices 0 .. num_dense_pages - 1
  std::vector<int64_t> streaming_indices;  // page index of each streaming page, ascending
  std::vector<uint8_t> dense_bytes;        // page after page, each all layers
  std::vector<uint8_t> streaming_bytes;

  int64_t bytes() const {
    return static_cast<int64_t>(dense_bytes.size() + streaming_bytes.size());
  }
};

// Where a sequence's KV lives in a store's pools: dense pages in page-index order, and
// streaming pages in the order of KvSnapshot::streaming_indices.
struct KvPlacement {
  std::vector<int32_t> dense;
  std::vector<int32_t> streaming;
};

// A sequence's KV by reference: the snapshot's description without its bytes, and the
// pages holding them.
struct KvPageExport {
  KvSnapshot manifest;
  KvPlacement pages;
};

// OK when a snapshot of `shape` can enter a store of `target`; else a message naming the
// first difference.
absl::Status CheckCompatible(const KvShape& shape, const KvShape& target);

}  // namespace lserve

#endif  // LSERVE_KVSTORE_KV_SNAPSHOT_H_
