// The one function that derives a KV store's config from the attention config, the
// model's geometry and the memory it may use.
#ifndef LSERVE_WORKER_ATTENTION_KV_STORE_SIZING_H_
#define LSERVE_WORKER_ATTENTION_KV_STORE_SIZING_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "kernels/dtype.h"
#include "kvstore/kv_store_config.h"
#include "worker/attention/attention_config.h"

namespace lserve {

struct KvGeometry {
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int64_t max_context = 0;  // tokens one sequence may hold
};

struct KvMemoryBudget {
  // Pages per pool; 0 sizes the streaming pool for max_sequences rings and the dense pool
  // for max_sequences full contexts, both together within max_bytes.
  int64_t dense_pages = 0;
  int64_t streaming_pages = 0;
  int max_sequences = 8;
  int64_t max_bytes = int64_t{4} << 30;
  int64_t max_chunk_tokens = 2048;  // longest prefill chunk the streaming ring must hold
  DType dtype = DType::kF32;
};

// Head layout from the gate file (or the seeded choice), windows and page sizes from the
// attention config, pool sizes from the capacity. RESOURCE_EXHAUSTED when max_bytes
// leaves no room for dense pages.
absl::StatusOr<KvStoreConfig> KvStoreConfigFor(const SparseAttentionConfig& attention,
                                               const KvGeometry& geometry,
                                               const KvMemoryBudget& capacity);

// Bytes the KV pools may take on a device with `free_bytes` free once weights and
// activations are in place: `fraction` of them, leaving at least `reserve` for the
// workspaces ops allocate on first use; 0 when nothing is left.
int64_t KvBytesFromFreeMemory(int64_t free_bytes, double fraction, int64_t reserve);

// Bytes of one page of each pool over all layers (K, V and, for dense, kmax/kmin).
int64_t DensePageBytes(const KvStoreConfig& config);
int64_t StreamingPageBytes(const KvStoreConfig& config);

}  // namespace lserve

#endif  // LSERVE_WORKER_ATTENTION_KV_STORE_SIZING_H_
