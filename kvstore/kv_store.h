// The KV store of one engine: page tables, the dense and streaming pools, the optional
// prefix cache, and export/import of whole sequences.
#ifndef LSERVE_KVSTORE_KV_STORE_H_
#define LSERVE_KVSTORE_KV_STORE_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/memory_space.h"
#include "kvstore/kv_pool.h"
#include "kvstore/kv_snapshot.h"
#include "kvstore/kv_store_config.h"
#include "kvstore/page_tables.h"
#include "kvstore/prefix_cache.h"

namespace lserve {

// Pages held by sequences, and pages held only by the prefix cache (reclaimable).
struct KvUsage {
  int64_t dense_used = 0;
  int64_t streaming_used = 0;
  int64_t dense_cached = 0;
  int64_t streaming_cached = 0;
  int64_t dense_total = 0;
  int64_t streaming_total = 0;
};

class KvStore {
 public:
  // `memory` holds the pools (host memory, or a backend's device memory).
  static absl::StatusOr<std::unique_ptr<KvStore>> Create(KvStoreConfig config, MemorySpace* memory,
                                                         bool prefix_caching = false);
  ~KvStore();
  KvStore(const KvStore&) = delete;
  KvStore& operator=(const KvStore&) = delete;

  const KvStoreConfig& config() const { return tables_.config(); }
  const HeadLayout& layout() const { return tables_.config().layout; }
  KvPageTables& tables() { return tables_; }
  const KvPageTables& tables() const { return tables_; }
  KvPool& dense_pool() { return dense_pool_; }
  const KvPool& dense_pool() const { return dense_pool_; }
  KvPool& streaming_pool() { return streaming_pool_; }
  const KvPool& streaming_pool() const { return streaming_pool_; }
  PrefixCache* prefix_cache() { return prefix_cache_.get(); }
  const PrefixCache* prefix_cache() const { return prefix_cache_.get(); }
  KvShape shape() const { return KvShape::Of(config()); }

  absl::Status AddSequence(SeqId seq) { return tables_.AddSequence(seq); }
  // Releases the sequence's pages (shared ones stay with their other holders).
  absl::Status FreeSequence(SeqId seq);

  KvUsage Usage() const;

  // Copies out a sequence's committed KV; the sequence stays.
  absl::StatusOr<KvSnapshot> ExportSequence(SeqId seq) const;
  // Creates `seq` from a snapshot, all or nothing: RESOURCE_EXHAUSTED when its pages do
  // not fit, INVALID_ARGUMENT when the shapes differ or the snapshot is malformed.
  absl::Status ImportSequence(SeqId seq, const KvSnapshot& snapshot);
  // The pages of a sequence's committed KV, for a transport that reads the pools itself;
  // with `pending_tokens`, as it will be once that many tokens extended (and being
  // computed) are committed.
  absl::StatusOr<KvPageExport> ExportPages(SeqId seq, int64_t pending_tokens = 0) const;
  // Creates `seq` from a manifest (a snapshot without bytes) on freshly allocated pages
  // whose contents the caller then writes; errors as ImportSequence. Until written, the
  // pages hold stale data: free the sequence if the writing fails.
  absl::StatusOr<KvPlacement> ImportPages(SeqId seq, const KvSnapshot& manifest);

  // Every page's reference count equals its holders (sequences and the prefix cache);
  // INTERNAL naming the first page that differs.
  absl::Status CheckConsistency() const;

 private:
  KvStore(const KvStoreConfig& config) : tables_(config) {}
  // INVALID_ARGUMENT unless the snapshot fits this store; `with_bytes`: it carries every
  // page's bytes, else none.
  absl::Status CheckManifest(const KvSnapshot& snapshot, bool with_bytes) const;

  KvPageTables tables_;
  KvPool dense_pool_;
  KvPool streaming_pool_;
  std::unique_ptr<PrefixCache> prefix_cache_;
};

}  // namespace lserve

#endif  // LSERVE_KVSTORE_KV_STORE_H_
