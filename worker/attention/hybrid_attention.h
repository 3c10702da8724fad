// One layer of hybrid sparse attention over the paged KV store (DESIGN.md §3) for a batch
// mixing prefill chunks and decode tokens: dense heads attend causally (selected pages
// only when decoding past the budget), streaming heads over sink + local window. The
// engine appends each layer's K/V and runs it per layer over the step's AttentionPlan;
// benchmarks and tests run it on stores they fill directly.
#ifndef LSERVE_WORKER_ATTENTION_HYBRID_ATTENTION_H_
#define LSERVE_WORKER_ATTENTION_HYBRID_ATTENTION_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "common/memory_space.h"
#include "kernels/attention_params.h"
#include "kernels/backend.h"
#include "kvstore/kv_store.h"
#include "worker/attention/attention_config.h"
#include "worker/attention/attention_plan.h"
#include "worker/attention/page_selector.h"
#include "worker/attention/selection_rows.h"

namespace lserve {

class HybridAttention {
 public:
  // `store` and `backend` must outlive this object; num_q_heads must be a multiple of the
  // store's KV heads.
  static absl::StatusOr<std::unique_ptr<HybridAttention>> Create(
      KvStore* store, const SparseAttentionConfig& config, int num_q_heads, Backend* backend);

  // Writes the step's K/V rows of `layer` (post-RoPE, row_stride elements apart, all KV
  // heads per row) into the pools, with the page statistics.
  absl::Status Append(int layer, const AttentionPlan& plan, const void* k, const void* v,
                      int64_t row_stride);
  // RoPE of the step's q (in place) and k rows, then Append of k and v, as one backend op
  // (Backend::RopeAppendKv); k_rope.x is the k given to Append. The last op before it on
  // the backend's stream must be the one that writes q, k and v (the QKV projection), or
  // none: it lets the backend read everything else before that op ends
  // (RopeAppendKvParams::inputs_settled).
  absl::Status RopeAppend(int layer, const AttentionPlan& plan, const RopeParams& q_rope,
                          const RopeParams& k_rope, const void* v, int64_t row_stride);
  // Attention of `layer`: scores the selections due at this step, then one launch over
  // every head of the batch. q rows lie q_row_stride values apart (0: packed), each with
  // num_q_heads * head_dim values; out rows are packed. The last kernel before it on the
  // backend's stream must be this layer's append (RopeAppend or Append), or none: its
  // launches may read older K/V and statistics while that append still runs.
  absl::Status Run(int layer, const AttentionPlan& plan, const void* q, void* out,
                   int64_t q_row_stride = 0);

  void Forget(SeqId seq) {
    selector_.Forget(seq);
    if (device_rows_ != nullptr) device_rows_->Forget(seq);
  }
  // The selection each key (query head, or KV head when scoring per KV head) of `seq`
  // holds, at [layer * keys + key], as ascending page indices; empty for streaming heads
  // and where none was computed yet. Waits for the backend's queued work.
  absl::StatusOr<std::vector<std::vector<int32_t>>> ExportSelections(SeqId seq);
  // The next scoring of every key given a non-empty selection (laid out as
  // ExportSelections') keeps it instead of the top pages of its scores: replays another
  // backend's choices on the same history. Host-visible memory only (elsewhere the top-k
  // runs on the device).
  absl::Status ImportSelections(SeqId seq, const std::vector<std::vector<int32_t>>& selections);

  const AttentionStats& stats() const { return stats_; }
  int64_t selection_recomputations() const { return selector_.recomputations(); }
  int64_t selection_reuses() const { return selector_.reuses(); }
  const SparseAttentionConfig& config() const { return config_; }
  PageSelectionCache& selector() { return selector_; }

  // The kernels' view of one layer of the store (backend pointers).
  PagedKvLayer LayerView(int layer) const;

 private:
  HybridAttention(KvStore* store, const SparseAttentionConfig& config, int num_q_heads,
                  Backend* backend);
  AppendKvParams AppendParams(int layer, const AttentionPlan& plan, const void* k, const void* v,
                              int64_t row_stride) const;
  // The step's query rows: row_stride values apart.
  struct QueryRows {
    const void* data;
    int64_t row_stride;
  };
  // One selection per (sequence, query head) or (sequence, KV head).
  struct Selection {
    int b;
    int key;  // query head, or KV head when scoring per KV head
    int first_q_head;
    int num_q_heads;
    int job;  // index into jobs_, or -1 when the selection is reused
  };
  // Fills selection arrays for the sequences that select pages (scoring those due).
  absl::Status Select(int layer, const AttentionPlan& plan, QueryRows q);
  absl::Status ScoreJobs(int layer, const AttentionPlan& plan, QueryRows q, float* scores);
  // Host-visible memory: top-k on the host, selections kept by selector_.
  absl::Status SelectOnHost(int layer, const AttentionPlan& plan, QueryRows q);
  int KeysPerLayer() const;
  // Offset of a layer's rows within a sequence's block of selection rows.
  int32_t FirstSelectionRowOfLayer(int layer) const;
  // Device memory: top-k on the device into device_rows_, no copy to the host.
  absl::Status SelectOnDevice(int layer, const AttentionPlan& plan, QueryRows q);

  KvStore* store_;
  SparseAttentionConfig config_;
  int num_q_heads_;
  Backend* backend_;
  PageSelectionCache selector_;
  std::unique_ptr<SelectionRows> device_rows_;  // set when memory is not host-visible
  AttentionStats stats_;
  // Per layer: each KV head's slot and kind, in backend memory.
  std::vector<Buffer> head_slots_;
  std::vector<Buffer> head_streaming_;
  // Scratch reused across layers and steps.
  std::vector<Selection> selections_;
  std::vector<PageScoreJob> jobs_;
  std::vector<int32_t> job_rows_;
  // Slots relative to the layer's first selection row (the attention params' row arrays
  // start there), so every layer of a step has the same slots and stages them once.
  std::vector<int32_t> selection_slot_;
  std::vector<int32_t> staged_selection_slot_;  // what selection_slot_device_ holds this step
  const int32_t* selection_slot_device_ = nullptr;
  std::vector<float> scores_;
  Buffer scores_device_;
  std::vector<Buffer> retired_scores_;
  std::vector<int32_t> selection_begin_, selection_end_, selected_pages_;
  const int32_t* selection_begin_device_ = nullptr;
  const int32_t* selection_end_device_ = nullptr;
  const int32_t* selected_pages_device_ = nullptr;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_ATTENTION_HYBRID_ATTENTION_H_
