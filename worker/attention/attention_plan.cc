#include "worker/attention/attention_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace lserve {
namespace {

constexpr int32_t kMaxKvLenGranule = 4096;

}  // namespace

absl::Status AttentionPlan::Build(const KvStore& store, std::span<const AttentionSequence> batch,
                                  const SparseAttentionConfig& config, Backend* backend) {
  batch_.assign(batch.begin(), batch.end());
  q_indptr_.assign(1, 0);
  local_.clear();
  max_local_ = 0;
  selects_.clear();
  any_selects_ = false;
  std::vector<BatchSequence> entries;
  for (const AttentionSequence& s : batch_) {
    if (s.q_row != q_indptr_.back()) {
      return absl::InvalidArgumentError(absl::StrCat("attention plan: sequence ", s.seq,
                                                     " starts at row ", s.q_row, ", expected ",
                                                     q_indptr_.back()));
    }
    const int64_t kv_len = s.start_pos + s.num_queries;
    q_indptr_.push_back(static_cast<int32_t>(s.q_row + s.num_queries));
    local_.push_back(static_cast<int32_t>(s.decode ? config.decode_local : config.prefill_local));
    max_local_ = std::max(max_local_, local_.back());
    const bool selects = config.SelectsPages(kv_len, s.decode);
    selects_.push_back(selects ? 1 : 0);
    any_selects_ = any_selects_ || selects;
    entries.push_back({s.seq, kv_len});
  }
  host_.Clear();
  store.tables().ExportBatch(entries, &host_);
  tables_ = PageTableView{};
  tables_.num_seqs = static_cast<int>(batch_.size());
  tables_.ring_start = host_.ring_start;
  bool in_prefix = true;
  bool selects_past_prefix = false;
  for (size_t b = 0; b < batch_.size(); ++b) {
    tables_.max_kv_len = std::max(tables_.max_kv_len, host_.kv_len[b]);
    tables_.max_queries =
        std::max(tables_.max_queries, static_cast<int32_t>(batch_[b].num_queries));
    in_prefix = in_prefix && batch_[b].num_queries == 1;
    if (in_prefix) ++tables_.single_row_prefix;
    selects_past_prefix = selects_past_prefix || (!in_prefix && selects_[b] != 0);
  }
  if (selects_past_prefix) tables_.single_row_prefix = 0;
  // The hint only sizes launches: rounded up, it stays the same over thousands of decode
  // steps, and with it the launches of a replayed step.
  tables_.max_kv_len =
      (tables_.max_kv_len + kMaxKvLenGranule - 1) / kMaxKvLenGranule * kMaxKvLenGranule;
  ASSIGN_OR_RETURN(tables_.kv_len, StageVector(backend, host_.kv_len));
  ASSIGN_OR_RETURN(tables_.dense_indptr, StageVector(backend, host_.dense_indptr));
  ASSIGN_OR_RETURN(tables_.dense_indices, StageVector(backend, host_.dense_indices));
  ASSIGN_OR_RETURN(tables_.stream_indptr, StageVector(backend, host_.stream_indptr));
  ASSIGN_OR_RETURN(tables_.stream_indices, StageVector(backend, host_.stream_indices));
  ASSIGN_OR_RETURN(tables_.stream_sink_pages, StageVector(backend, host_.stream_sink_pages));
  ASSIGN_OR_RETURN(q_indptr_device_, StageVector(backend, q_indptr_));
  ASSIGN_OR_RETURN(local_device_, StageVector(backend, local_));
  return absl::OkStatus();
}

}  // namespace lserve
