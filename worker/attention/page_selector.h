// Dynamic sparsity: query-aware selection of dense-head KV pages for decode (DESIGN.md §3).
// Backends score pages (ScorePagesParams); this file picks the pages and keeps each
// selection on its reuse schedule.
#ifndef LSERVE_WORKER_ATTENTION_PAGE_SELECTOR_H_
#define LSERVE_WORKER_ATTENTION_PAGE_SELECTOR_H_

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "kvstore/page_tables.h"
#include "worker/attention/attention_config.h"

namespace lserve {

// The newest page plus the max_pages - 1 best others, as ascending page indices. Equal
// scores prefer the lower index. Everything when the pages fit.
std::vector<int32_t> SelectTopPages(std::span<const float> scores, int64_t max_pages);

// Per sequence, layer and head: the selection in use, recomputed every reuse_interval
// decode steps and reused in between.
class PageSelectionCache {
 public:
  PageSelectionCache(const SparseAttentionConfig& config, int num_layers)
      : config_(config), num_layers_(num_layers) {}

  // Whether the schedule asks for fresh scores for `head` (a query head, or a KV head when
  // scoring per KV head) at this decode step.
  bool Due(SeqId seq, int layer, int head, int64_t decode_step);
  // Stores the selection made from fresh scores.
  const std::vector<int32_t>& Update(SeqId seq, int layer, int head, int64_t decode_step,
                                     std::span<const float> scores);
  // Records a selection made elsewhere (on a device) from fresh scores at decode_step.
  void MarkComputed(SeqId seq, int layer, int head, int64_t decode_step);
  // Counts a selection reused elsewhere.
  void CountReuse() { ++reuses_; }
  // The selection in use plus the newest page of a history of kv_len tokens.
  const std::vector<int32_t>& Reuse(SeqId seq, int layer, int head, int64_t kv_len);
  void Forget(SeqId seq) { selections_.erase(seq); }
  // The selection last computed for the head (empty when none).
  const std::vector<int32_t>& Current(SeqId seq, int layer, int head) {
    return EntryFor(seq, layer, head).pages;
  }
  // Whether a selection was computed for the head (here or on a device).
  bool Computed(SeqId seq, int layer, int head) {
    return EntryFor(seq, layer, head).computed_at >= 0;
  }
  // The next Update of the head keeps `pages` (ascending page indices, the newest among
  // them) instead of choosing from its scores: a selection made elsewhere, e.g. by another
  // backend on the same history, replayed here. A later Import replaces a pending one.
  void Import(SeqId seq, int layer, int head, std::vector<int32_t> pages);

  int64_t recomputations() const { return recomputations_; }
  int64_t reuses() const { return reuses_; }

 private:
  struct Entry {
    std::vector<int32_t> pages;
    int64_t computed_at = -1;
    std::vector<int32_t> with_newest;  // pages plus the newest page when reused
    bool has_import = false;
    std::vector<int32_t> imported;  // what the next Update keeps (Import)
  };
  Entry& EntryFor(SeqId seq, int layer, int head);

  SparseAttentionConfig config_;
  int num_layers_;
  std::unordered_map<SeqId, std::vector<std::vector<Entry>>> selections_;  // [layer][head]
  int64_t recomputations_ = 0;
  int64_t reuses_ = 0;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_ATTENTION_PAGE_SELECTOR_H_
