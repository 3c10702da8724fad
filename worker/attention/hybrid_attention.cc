#include "worker/attention/hybrid_attention.h"

#include <cmath>

namespace lserve {

HybridAttention::HybridAttention(const PagedKvCache* kv, const SparseAttentionConfig& config,
                                 int num_heads)
    : kv_(kv), config_(config), num_heads_(num_heads), selector_(kv, config) {}

int HybridAttention::NewSpanList() {
  if (span_lists_used_ == span_storage_.size()) span_storage_.emplace_back();
  span_storage_[span_lists_used_].clear();
  return static_cast<int>(span_lists_used_++);
}

void HybridAttention::CollectSpans(int layer, const AttentionSequence& s,
                                   std::vector<int>* head_list) {
  const int num_kv_heads = kv_->config().num_kv_heads;
  const int group = num_heads_ / num_kv_heads;
  const LayerHeadLayout& heads = kv_->layout().layers[layer];
  const int64_t kv_len = s.start_pos + s.num_queries;
  head_list->assign(num_heads_, -1);
  if (heads.num_streaming > 0) {
    const int list = NewSpanList();
    kv_->StreamingSpans(s.seq, kv_len, s.start_pos,
                        s.decode ? config_.decode_local : config_.prefill_local,
                        &span_storage_[list]);
    for (int h = 0; h < num_heads_; ++h) {
      if (heads.streaming[h / group]) (*head_list)[h] = list;
    }
  }
  if (heads.num_dense == 0) return;
  const int64_t num_pages = (kv_len + config_.page_size - 1) / config_.page_size;
  if (!s.decode || !config_.page_selection || num_pages <= config_.BudgetPages()) {
    const int list = NewSpanList();
    kv_->DenseSpans(s.seq, kv_len, &span_storage_[list]);
    for (int h = 0; h < num_heads_; ++h) {
      if (!heads.streaming[h / group]) (*head_list)[h] = list;
    }
    return;
  }
  // Selections were scored (where due) by ScoreDueSelections; jobs come in the same order.
  const bool per_kv = config_.scoring == PageScoring::kPerKvHead;
  for (int kv_head = 0; kv_head < num_kv_heads; ++kv_head) {
    if (heads.streaming[kv_head]) continue;
    const int first = kv_head * group;
    for (int h = first; h < first + group; h += per_kv ? group : 1) {
      SelectionJob& job = jobs_[jobs_used_++];
      const auto& pages = job.due
                              ? selector_.Update(s.seq, layer, job.head, s.decode_step, job.scores)
                              : selector_.Reuse(s.seq, layer, job.head, kv_len);
      const int list = NewSpanList();
      kv_->SelectedDenseSpans(s.seq, kv_len, pages, &span_storage_[list]);
      for (int g = h; g < (per_kv ? first + group : h + 1); ++g) (*head_list)[g] = list;
    }
  }
}

void HybridAttention::ScoreDueSelections(int layer, std::span<const AttentionSequence> batch,
                                         const float* q, ThreadPool* pool) {
  const int d = kv_->config().head_dim;
  const int num_kv_heads = kv_->config().num_kv_heads;
  const int group = num_heads_ / num_kv_heads;
  const LayerHeadLayout& heads = kv_->layout().layers[layer];
  const bool per_kv = config_.scoring == PageScoring::kPerKvHead;
  size_t num_jobs = 0;
  for (size_t b = 0; b < batch.size(); ++b) {
    const AttentionSequence& s = batch[b];
    const int64_t kv_len = s.start_pos + s.num_queries;
    const int64_t num_pages = (kv_len + config_.page_size - 1) / config_.page_size;
    if (heads.num_dense == 0 || !s.decode || !config_.page_selection ||
        num_pages <= config_.BudgetPages()) {
      continue;
    }
    for (int kv_head = 0; kv_head < num_kv_heads; ++kv_head) {
      if (heads.streaming[kv_head]) continue;
      for (int h = kv_head * group; h < (kv_head + 1) * group; h += per_kv ? group : 1) {
        if (num_jobs == jobs_.size()) jobs_.emplace_back();
        SelectionJob& job = jobs_[num_jobs++];
        job.sequence = b;
        job.head = per_kv ? kv_head : h;
        job.kv_head = kv_head;
        job.due = selector_.Due(s.seq, layer, job.head, s.decode_step);
      }
    }
  }
  jobs_.resize(std::max(jobs_.size(), num_jobs));
  ParallelFor(pool, static_cast<int64_t>(num_jobs), 1, [&](int64_t begin, int64_t end) {
    std::vector<const float*> queries;
    for (int64_t j = begin; j < end; ++j) {
      SelectionJob& job = jobs_[j];
      if (!job.due) continue;
      const AttentionSequence& s = batch[job.sequence];
      const float* row = q + s.q_row * int64_t{num_heads_} * d;
      queries.clear();
      const int first = per_kv ? job.kv_head * group : job.head;
      for (int g = first; g < first + (per_kv ? group : 1); ++g) queries.push_back(row + g * d);
      ScorePhysicalPages(*kv_, layer, s.seq, heads.slot[job.kv_head], s.start_pos + s.num_queries,
                         queries, &job.scores);
    }
  });
  jobs_used_ = 0;
}

void HybridAttention::Run(int layer, std::span<const AttentionSequence> batch, const float* q,
                          float* out, ThreadPool* pool) {
  const int d = kv_->config().head_dim;
  const int group = num_heads_ / kv_->config().num_kv_heads;
  const int64_t q_dim = int64_t{num_heads_} * d;
  const LayerHeadLayout& heads = kv_->layout().layers[layer];
  span_lists_used_ = 0;
  ScoreDueSelections(layer, batch, q, pool);
  head_lists_.resize(batch.size());
  for (size_t b = 0; b < batch.size(); ++b) CollectSpans(layer, batch[b], &head_lists_[b]);
  tasks_.clear();
  for (size_t b = 0; b < batch.size(); ++b) {
    const AttentionSequence& s = batch[b];
    for (int h = 0; h < num_heads_; ++h) {
      const int kv_head = h / group;
      const bool streaming = heads.streaming[kv_head];
      const std::vector<cpu::KvSpan>& spans = span_storage_[head_lists_[b][h]];
      const int64_t head_offset = heads.slot[kv_head] * kv_->HeadStride();
      cpu::AttentionTask task;
      task.q = q + s.q_row * q_dim + int64_t{h} * d;
      task.out = out + s.q_row * q_dim + int64_t{h} * d;
      task.q_stride = task.out_stride = q_dim;
      task.num_queries = static_cast<int32_t>(s.num_queries);
      task.first_query_pos = s.start_pos;
      task.spans = spans.data();
      task.num_spans = static_cast<int32_t>(spans.size());
      task.k_base = (streaming ? kv_->StreamingK(layer) : kv_->DenseK(layer)) + head_offset;
      task.v_base = (streaming ? kv_->StreamingV(layer) : kv_->DenseV(layer)) + head_offset;
      task.page_stride = streaming ? kv_->StreamingPageStride(layer) : kv_->DensePageStride(layer);
      task.window = {streaming, config_.sink,
                     s.decode ? config_.decode_local : config_.prefill_local};
      tasks_.push_back(task);
      stats_.tiles_dense +=
          cpu::DenseCausalTiles(s.num_queries, s.start_pos + s.num_queries, config_.page_size);
    }
  }
  cpu::AttentionParams params;
  params.head_dim = d;
  params.scale = 1.0f / std::sqrt(static_cast<float>(d));
  params.tasks = tasks_;
  cpu::PagedAttention(params, pool, &stats_);
}

}  // namespace lserve
