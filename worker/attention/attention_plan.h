// The attention plan of one engine step (DESIGN.md §3): built once from the page tables,
// it fixes for every sequence of the batch its rows, its KV length, its streaming window
// and whether its dense heads read selected pages; HybridAttention runs it per layer. The
// page tables and per-sequence arrays are staged into backend memory here, once a step.
#ifndef LSERVE_WORKER_ATTENTION_ATTENTION_PLAN_H_
#define LSERVE_WORKER_ATTENTION_ATTENTION_PLAN_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/backend.h"
#include "kvstore/kv_store.h"
#include "kvstore/page_table_arrays.h"
#include "worker/attention/attention_config.h"

namespace lserve {

// One sequence's queries in a step.
struct AttentionSequence {
  SeqId seq = 0;
  int64_t q_row = 0;        // first row of its queries in q / out
  int64_t num_queries = 0;  // chunk length, 1 when decoding
  int64_t start_pos = 0;    // position of the first query; the KV holds start_pos + n tokens
  bool decode = false;
  int64_t decode_step = 0;  // decode steps taken before this one (selection schedule)
};

class AttentionPlan {
 public:
  // Sequences must be in row order with contiguous rows, and their KV extended to hold
  // start_pos + num_queries tokens.
  absl::Status Build(const KvStore& store, std::span<const AttentionSequence> batch,
                     const SparseAttentionConfig& config, Backend* backend);

  std::span<const AttentionSequence> batch() const { return batch_; }
  const PageTableArrays& host_tables() const { return host_; }
  // Backend pointers, valid until the backend's next BeginStep.
  const PageTableView& tables() const { return tables_; }
  const int32_t* q_indptr() const { return q_indptr_device_; }
  const int32_t* local() const { return local_device_; }
  // The longest streaming window of the batch's sequences (host).
  int32_t max_local() const { return max_local_; }
  // Whether sequence b's dense heads read selected pages in this step.
  bool selects(size_t b) const { return selects_[b] != 0; }
  bool any_selects() const { return any_selects_; }
  int64_t num_rows() const { return q_indptr_.empty() ? 0 : q_indptr_.back(); }

 private:
  std::vector<AttentionSequence> batch_;
  PageTableArrays host_;
  std::vector<int32_t> q_indptr_;
  std::vector<int32_t> local_;
  int32_t max_local_ = 0;
  std::vector<uint8_t> selects_;
  bool any_selects_ = false;
  PageTableView tables_;
  const int32_t* q_indptr_device_ = nullptr;
  const int32_t* local_device_ = nullptr;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_ATTENTION_ATTENTION_PLAN_H_
