// Writes tokens' K/V into a KV store the way an engine step does (Extend, a per-layer
// append through the backend with the page statistics update, Commit) but without a
// model: for tests, benchmarks and quality experiments that fill stores directly.
#ifndef LSERVE_WORKER_ATTENTION_KV_WRITER_H_
#define LSERVE_WORKER_ATTENTION_KV_WRITER_H_

#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kvstore/kv_store.h"
#include "worker/attention/attention_config.h"
#include "worker/attention/attention_plan.h"
#include "worker/attention/hybrid_attention.h"

namespace lserve {

// The attention config whose windows and page sizes match a store's.
SparseAttentionConfig AttentionConfigFor(const KvStoreConfig& config);

class KvWriter {
 public:
  static absl::StatusOr<std::unique_ptr<KvWriter>> Create(KvStore* store, Backend* backend);

  // Appends n tokens to `seq` (added when new): k[layer] and v[layer] hold n host rows of
  // num_kv_heads * head_dim floats each.
  absl::Status Append(SeqId seq, int64_t n, bool decode, std::span<const float* const> k,
                      std::span<const float* const> v);

 private:
  KvWriter(KvStore* store, Backend* backend) : store_(store), backend_(backend) {}

  KvStore* store_;
  Backend* backend_;
  std::unique_ptr<HybridAttention> attention_;
  AttentionPlan plan_;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_ATTENTION_KV_WRITER_H_
