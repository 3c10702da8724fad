// The shape of a KV store: model geometry, page sizes, pool capacities, streaming windows
// and the storage type. Derived from the attention config by worker/attention.
#ifndef LSERVE_KVSTORE_KV_STORE_CONFIG_H_
#define LSERVE_KVSTORE_KV_STORE_CONFIG_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/dtype.h"
#include "kvstore/head_layout.h"

namespace lserve {

struct KvStoreConfig {
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
  DType dtype = DType::kF32;  // K, V and the page statistics
};

// Checks every field; an empty layout is accepted (all heads dense).
absl::Status ValidateKvStoreConfig(const KvStoreConfig& config);

}  // namespace lserve

#endif  // LSERVE_KVSTORE_KV_STORE_CONFIG_H_
