// One layer of hybrid sparse attention over the paged KV cache (DESIGN.md §3) for a
// batch mixing prefill chunks and decode tokens: dense heads attend causally (selected
// pages only when decoding past the budget), streaming heads over sink + local window.
// The engine runs it per layer; benchmarks run it on caches they fill directly.
#ifndef LSERVE_WORKER_ATTENTION_HYBRID_ATTENTION_H_
#define LSERVE_WORKER_ATTENTION_HYBRID_ATTENTION_H_

#include <cstdint>
#include <span>
#include <vector>

#include "common/thread_pool.h"
#include "kernels/cpu/attention.h"
#include "kvstore/paged_kv_cache.h"
#include "worker/attention/attention_config.h"
#include "worker/attention/page_selector.h"

namespace lserve {

// One sequence's queries in a layer's attention call.
struct AttentionSequence {
  SeqId seq = 0;
  int64_t q_row = 0;        // first row of its queries in q / out
  int64_t num_queries = 0;  // chunk length, 1 when decoding
  int64_t start_pos = 0;    // position of the first query; the KV holds start_pos + n tokens
  bool decode = false;
  int64_t decode_step = 0;  // decode steps taken before this one (selection schedule)
};

class HybridAttention {
 public:
  HybridAttention(const PagedKvCache* kv, const SparseAttentionConfig& config, int num_heads);

  // q and out hold one row per query of num_heads * head_dim floats (post-RoPE q). The
  // batch's K/V must already be written to the cache for this layer.
  void Run(int layer, std::span<const AttentionSequence> batch, const float* q, float* out,
           ThreadPool* pool);

  void Forget(SeqId seq) { selector_.Forget(seq); }
  const cpu::AttentionStats& stats() const { return stats_; }
  int64_t selection_recomputations() const { return selector_.recomputations(); }

 private:
  // Fills head_list[h] with the index of query head h's span list.
  void CollectSpans(int layer, const AttentionSequence& s, std::vector<int>* head_list);
  // Scores, in parallel across heads and sequences, every selection due at this step.
  void ScoreDueSelections(int layer, std::span<const AttentionSequence> batch, const float* q,
                          ThreadPool* pool);
  int NewSpanList();

  const PagedKvCache* kv_;
  SparseAttentionConfig config_;
  int num_heads_;
  PageSelectionCache selector_;
  cpu::AttentionStats stats_;
  std::vector<std::vector<cpu::KvSpan>> span_storage_;
  size_t span_lists_used_ = 0;
  std::vector<std::vector<int>> head_lists_;
  std::vector<cpu::AttentionTask> tasks_;
  // One selection job per (sequence, head or KV head) that decodes past the budget.
  struct SelectionJob {
    size_t sequence = 0;
    int head = 0;  // query head, or KV head when scoring per KV head
    int kv_head = 0;
    bool due = false;
    std::vector<float> scores;
  };
  std::vector<SelectionJob> jobs_;
  size_t jobs_used_ = 0;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_ATTENTION_HYBRID_ATTENTION_H_
