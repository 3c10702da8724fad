// Dynamic sparsity: query-aware selection of dense-head KV pages for decode (DESIGN.md §3).
//
// Logical page j scores S_j = sum_c max(q_c * kmax_jc, q_c * kmin_jc), an upper bound of
// q.k over the page; a physical page scores the max of its logical pages. A selection
// keeps the newest page plus the best-scoring others within the token budget.
#ifndef LSERVE_WORKER_ATTENTION_PAGE_SELECTOR_H_
#define LSERVE_WORKER_ATTENTION_PAGE_SELECTOR_H_

#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "kvstore/paged_kv_cache.h"
#include "worker/attention/attention_config.h"

namespace lserve {

float LogicalPageScore(const float* q, const float* kmax, const float* kmin, int head_dim);

// q.k summed in the same order as LogicalPageScore (eight interleaved partial sums), so
// the float32 bound S_j >= q.k holds exactly: each term of S_j is >= the matching term of
// q.k and rounding is monotonic.
float ScoreOrderDot(const float* q, const float* k, int head_dim);

// Scores of the sequence's physical pages holding [0, kv_len) for one dense head slot of a
// layer; with several queries (a GQA group scored per KV head) a page takes the max.
void ScorePhysicalPages(const PagedKvCache& cache, int layer, SeqId seq, int slot, int64_t kv_len,
                        std::span<const float* const> queries, std::vector<float>* scores);

// The newest page plus the max_pages - 1 best others, as ascending page indices. Equal
// scores prefer the lower index. Everything when the pages fit.
std::vector<int32_t> SelectTopPages(std::span<const float> scores, int64_t max_pages);

// Per sequence, layer and head: the selection in use, recomputed every reuse_interval
// decode steps and reused in between.
class PageSelectionCache {
 public:
  PageSelectionCache(const PagedKvCache* cache, SparseAttentionConfig config)
      : cache_(cache), config_(std::move(config)) {}

  // Pages that `head` (a query head, or a KV head when scoring per KV head) of a dense
  // slot reads at this decode step. `queries` are the post-RoPE query vectors scored.
  const std::vector<int32_t>& Select(SeqId seq, int layer, int head, int slot, int64_t kv_len,
                                     int64_t decode_step, std::span<const float* const> queries);
  // The same in two halves, so callers can score many heads in parallel: Due says whether
  // the schedule asks for fresh scores; Update stores a selection made from them; Reuse
  // returns the selection in use plus the newest page.
  bool Due(SeqId seq, int layer, int head, int64_t decode_step);
  const std::vector<int32_t>& Update(SeqId seq, int layer, int head, int64_t decode_step,
                                     std::span<const float> scores);
  const std::vector<int32_t>& Reuse(SeqId seq, int layer, int head, int64_t kv_len);
  void Forget(SeqId seq) { selections_.erase(seq); }

  int64_t recomputations() const { return recomputations_; }

 private:
  struct Entry;
  Entry& EntryFor(SeqId seq, int layer, int head);

  struct Entry {
    std::vector<int32_t> pages;
    int64_t computed_at = -1;
    std::vector<int32_t> with_newest;  // pages plus the newest page when reused
  };
  const PagedKvCache* cache_;
  SparseAttentionConfig config_;
  std::unordered_map<SeqId, std::vector<std::vector<Entry>>> selections_;  // [layer][head]
  std::vector<float> scores_;
  int64_t recomputations_ = 0;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_ATTENTION_PAGE_SELECTOR_H_
