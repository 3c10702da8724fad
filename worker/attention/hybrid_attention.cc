#include "worker/attention/hybrid_attention.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace lserve {
namespace {

template <typename T>
absl::StatusOr<Buffer> UploadVector(MemorySpace* memory, const std::vector<T>& host) {
  ASSIGN_OR_RETURN(Buffer buffer, Buffer::Allocate(memory, host.size() * sizeof(T)));
  RETURN_IF_ERROR(memory->CopyFromHost(buffer.data(), host.data(), host.size() * sizeof(T)));
  return buffer;
}

}  // namespace

HybridAttention::HybridAttention(KvStore* store, const SparseAttentionConfig& config,
                                 int num_q_heads, Backend* backend)
    : store_(store),
      config_(config),
      num_q_heads_(num_q_heads),
      backend_(backend),
      selector_(config, store->config().num_layers) {}

absl::StatusOr<std::unique_ptr<HybridAttention>> HybridAttention::Create(
    KvStore* store, const SparseAttentionConfig& config, int num_q_heads, Backend* backend) {
  const int num_kv_heads = store->config().num_kv_heads;
  if (num_q_heads <= 0 || num_q_heads % num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("hybrid attention: ", num_q_heads,
                                                   " query heads do not group over ", num_kv_heads,
                                                   " KV heads"));
  }
  if (config.page_size != store->config().page_size ||
      config.logical_page_size != store->config().logical_page_size) {
    return absl::InvalidArgumentError("hybrid attention: page sizes differ from the KV store's");
  }
  std::unique_ptr<HybridAttention> attention(
      new HybridAttention(store, config, num_q_heads, backend));
  if (!backend->memory()->host_accessible() && config.page_selection) {
    const int keys = config.scoring == PageScoring::kPerKvHead ? num_kv_heads : num_q_heads;
    attention->device_rows_ =
        std::make_unique<SelectionRows>(backend->memory(), store->config().num_layers * keys,
                                        static_cast<int>(config.BudgetPages()));
  }
  for (const LayerHeadLayout& layer : store->layout().layers) {
    std::vector<int32_t> slots(layer.slot.begin(), layer.slot.end());
    std::vector<uint8_t> streaming;
    for (bool s : layer.streaming) streaming.push_back(s ? 1 : 0);
    ASSIGN_OR_RETURN(Buffer slot_buffer, UploadVector(backend->memory(), slots));
    ASSIGN_OR_RETURN(Buffer streaming_buffer, UploadVector(backend->memory(), streaming));
    attention->head_slots_.push_back(std::move(slot_buffer));
    attention->head_streaming_.push_back(std::move(streaming_buffer));
  }
  return attention;
}

PagedKvLayer HybridAttention::LayerView(int layer) const {
  const KvStoreConfig& c = store_->config();
  const LayerHeadLayout& heads = c.layout.layers[layer];
  PagedKvLayer view;
  view.dtype = c.dtype;
  view.page_size = c.page_size;
  view.logical_page_size = c.logical_page_size;
  view.head_dim = c.head_dim;
  view.num_kv_heads = c.num_kv_heads;
  view.kv_head_slot = head_slots_[layer].as<int32_t>();
  view.kv_head_streaming = head_streaming_[layer].as<uint8_t>();
  view.dense = {store_->dense_pool().LayerBase(layer), store_->dense_pool().PageStride(layer),
                heads.num_dense};
  view.streaming = {store_->streaming_pool().LayerBase(layer),
                    store_->streaming_pool().PageStride(layer), heads.num_streaming};
  return view;
}

AppendKvParams HybridAttention::AppendParams(int layer, const AttentionPlan& plan, const void* k,
                                             const void* v, int64_t row_stride) const {
  AppendKvParams params;
  params.kv = LayerView(layer);
  params.tables = plan.tables();
  params.q_indptr = plan.q_indptr();
  params.k = k;
  params.v = v;
  params.row_stride = row_stride;
  return params;
}

absl::Status HybridAttention::Append(int layer, const AttentionPlan& plan, const void* k,
                                     const void* v, int64_t row_stride) {
  return backend_->AppendKv(AppendParams(layer, plan, k, v, row_stride));
}

absl::Status HybridAttention::RopeAppend(int layer, const AttentionPlan& plan,
                                         const RopeParams& q_rope, const RopeParams& k_rope,
                                         const void* v, int64_t row_stride) {
  // The caller runs this right after the op that writes q, k and v (see the header).
  return backend_->RopeAppendKv(
      {q_rope, k_rope, AppendParams(layer, plan, k_rope.x, v, row_stride), true});
}

absl::Status HybridAttention::Select(int layer, const AttentionPlan& plan, QueryRows q) {
  const KvStoreConfig& c = store_->config();
  const int group = num_q_heads_ / c.num_kv_heads;
  const bool per_kv = config_.scoring == PageScoring::kPerKvHead;
  const LayerHeadLayout& heads = c.layout.layers[layer];
  const auto batch = plan.batch();
  selections_.clear();
  jobs_.clear();
  int32_t total_scores = 0;
  for (size_t b = 0; b < batch.size(); ++b) {
    if (!plan.selects(b)) continue;
    const AttentionSequence& s = batch[b];
    const int64_t kv_len = s.start_pos + s.num_queries;
    const int32_t num_pages = static_cast<int32_t>((kv_len + c.page_size - 1) / c.page_size);
    for (int kv_head = 0; kv_head < c.num_kv_heads; ++kv_head) {
      if (heads.streaming[kv_head]) continue;
      for (int h = kv_head * group; h < (kv_head + 1) * group; h += per_kv ? group : 1) {
        Selection sel{static_cast<int>(b), per_kv ? kv_head : h, per_kv ? kv_head * group : h,
                      per_kv ? group : 1, -1};
        if (selector_.Due(s.seq, layer, sel.key, s.decode_step)) {
          sel.job = static_cast<int>(jobs_.size());
          jobs_.push_back({static_cast<int32_t>(b), kv_head, sel.first_q_head, sel.num_q_heads,
                           static_cast<int32_t>(s.q_row + s.num_queries - 1), total_scores});
          total_scores += num_pages;
        }
        selections_.push_back(sel);
      }
    }
  }
  if (!jobs_.empty() && scores_device_.bytes() < total_scores * sizeof(float) &&
      !backend_->memory()->host_accessible()) {
    // Launches recorded earlier in a replayable step may still name the old buffer: it
    // lives until the next step's first layer.
    retired_scores_.push_back(std::move(scores_device_));
    ASSIGN_OR_RETURN(scores_device_,
                     Buffer::Allocate(backend_->memory(), total_scores * sizeof(float)));
  }
  if (device_rows_ == nullptr) scores_.resize(total_scores);
  return device_rows_ != nullptr ? SelectOnDevice(layer, plan, q) : SelectOnHost(layer, plan, q);
}

absl::Status HybridAttention::ScoreJobs(int layer, const AttentionPlan& plan, QueryRows q,
                                        float* scores) {
  ScorePagesParams params;
  params.kv = LayerView(layer);
  params.tables = plan.tables();
  params.q = q.data;
  params.q_row_stride = q.row_stride;
  ASSIGN_OR_RETURN(params.jobs, StageVector(backend_, jobs_));
  params.num_jobs = static_cast<int>(jobs_.size());
  params.scores = scores;
  params.after_append = true;  // Run follows the layer's RoPE + KV append (see Run)
  return backend_->ScorePages(params);
}

absl::Status HybridAttention::SelectOnHost(int layer, const AttentionPlan& plan, QueryRows q) {
  const KvStoreConfig& c = store_->config();
  const auto batch = plan.batch();
  if (!jobs_.empty()) RETURN_IF_ERROR(ScoreJobs(layer, plan, q, scores_.data()));
  selection_begin_.assign(batch.size() * num_q_heads_, -1);
  selection_end_.assign(batch.size() * num_q_heads_, -1);
  selected_pages_.clear();
  for (const Selection& sel : selections_) {
    const AttentionSequence& s = batch[sel.b];
    const int64_t kv_len = s.start_pos + s.num_queries;
    const std::vector<int32_t>* pages;
    if (sel.job >= 0) {
      const int64_t num_pages = (kv_len + c.page_size - 1) / c.page_size;
      pages = &selector_.Update(
          s.seq, layer, sel.key, s.decode_step,
          {scores_.data() + jobs_[sel.job].out_offset, static_cast<size_t>(num_pages)});
    } else {
      pages = &selector_.Reuse(s.seq, layer, sel.key, kv_len);
    }
    const int32_t begin = static_cast<int32_t>(selected_pages_.size());
    selected_pages_.insert(selected_pages_.end(), pages->begin(), pages->end());
    for (int h = sel.first_q_head; h < sel.first_q_head + sel.num_q_heads; ++h) {
      selection_begin_[sel.b * num_q_heads_ + h] = begin;
      selection_end_[sel.b * num_q_heads_ + h] = static_cast<int32_t>(selected_pages_.size());
    }
  }
  ASSIGN_OR_RETURN(selection_begin_device_, StageVector(backend_, selection_begin_));
  ASSIGN_OR_RETURN(selection_end_device_, StageVector(backend_, selection_end_));
  ASSIGN_OR_RETURN(selected_pages_device_, StageVector(backend_, selected_pages_));
  return absl::OkStatus();
}

int HybridAttention::KeysPerLayer() const {
  return config_.scoring == PageScoring::kPerKvHead ? store_->config().num_kv_heads : num_q_heads_;
}

int32_t HybridAttention::FirstSelectionRowOfLayer(int layer) const {
  return layer * KeysPerLayer();
}

absl::StatusOr<std::vector<std::vector<int32_t>>> HybridAttention::ExportSelections(SeqId seq) {
  const int keys = KeysPerLayer();
  const int num_layers = store_->config().num_layers;
  std::vector<std::vector<int32_t>> selections(static_cast<size_t>(num_layers) * keys);
  bool any = false;
  for (int layer = 0; layer < num_layers; ++layer) {
    for (int key = 0; key < keys; ++key) any = any || selector_.Computed(seq, layer, key);
  }
  if (!any || !config_.page_selection) return selections;
  std::vector<int32_t> counts(selections.size()), pages;
  if (device_rows_ != nullptr) {
    ASSIGN_OR_RETURN(const int32_t first_row, device_rows_->FirstRow(seq));
    const int stride = device_rows_->stride();
    pages.resize(selections.size() * stride);
    RETURN_IF_ERROR(backend_->SynchronizeAndRead(counts.data(), device_rows_->counts() + first_row,
                                                 counts.size() * sizeof(int32_t)));
    RETURN_IF_ERROR(backend_->SynchronizeAndRead(
        pages.data(), device_rows_->pages() + first_row * stride, pages.size() * sizeof(int32_t)));
  }
  for (int layer = 0; layer < num_layers; ++layer) {
    for (int key = 0; key < keys; ++key) {
      if (!selector_.Computed(seq, layer, key)) continue;
      const size_t row = static_cast<size_t>(FirstSelectionRowOfLayer(layer) + key);
      if (device_rows_ == nullptr) {
        selections[row] = selector_.Current(seq, layer, key);
        continue;
      }
      const int stride = device_rows_->stride();
      if (counts[row] < 0 || counts[row] > stride) {
        return absl::InternalError(absl::StrCat("selection row ", row, " holds ", counts[row],
                                                " pages, over its ", stride));
      }
      selections[row].assign(pages.begin() + row * stride,
                             pages.begin() + row * stride + counts[row]);
    }
  }
  return selections;
}

absl::Status HybridAttention::ImportSelections(
    SeqId seq, const std::vector<std::vector<int32_t>>& selections) {
  if (device_rows_ != nullptr) {
    return absl::FailedPreconditionError(
        "importing page selections needs host-visible backend memory");
  }
  const int keys = KeysPerLayer();
  if (selections.size() != static_cast<size_t>(store_->config().num_layers) * keys) {
    return absl::InvalidArgumentError(absl::StrCat("expected ", store_->config().num_layers * keys,
                                                   " selections, got ", selections.size()));
  }
  for (size_t row = 0; row < selections.size(); ++row) {
    const std::vector<int32_t>& pages = selections[row];
    if (pages.empty()) continue;
    if (std::adjacent_find(pages.begin(), pages.end(), std::greater_equal<int32_t>()) !=
            pages.end() ||
        pages.front() < 0 || static_cast<int64_t>(pages.size()) > config_.BudgetPages()) {
      return absl::InvalidArgumentError(
          absl::StrCat("selection ", row, " is not an ascending set within the budget"));
    }
  }
  for (size_t row = 0; row < selections.size(); ++row) {
    if (selections[row].empty()) continue;
    selector_.Import(seq, static_cast<int>(row / keys), static_cast<int>(row % keys),
                     selections[row]);
  }
  return absl::OkStatus();
}

absl::Status HybridAttention::SelectOnDevice(int layer, const AttentionPlan& plan, QueryRows q) {
  const auto batch = plan.batch();
  const int group = num_q_heads_ / store_->config().num_kv_heads;
  const bool per_kv = config_.scoring == PageScoring::kPerKvHead;
  // Every head of a selecting sequence gets its slot, streaming heads too (attention never
  // reads a streaming head's selection), so the slots do not depend on the layer's pattern.
  selection_slot_.assign(batch.size() * num_q_heads_, -1);
  for (size_t b = 0; b < batch.size(); ++b) {
    if (!plan.selects(b)) continue;
    ASSIGN_OR_RETURN(const int32_t first_row, device_rows_->FirstRow(batch[b].seq));
    for (int h = 0; h < num_q_heads_; ++h) {
      selection_slot_[b * num_q_heads_ + h] = first_row + (per_kv ? h / group : h);
    }
  }
  job_rows_.resize(jobs_.size());
  for (const Selection& sel : selections_) {
    if (sel.job >= 0) {
      selector_.MarkComputed(batch[sel.b].seq, layer, sel.key, batch[sel.b].decode_step);
      job_rows_[sel.job] = FirstSelectionRowOfLayer(layer) +
                           selection_slot_[sel.b * num_q_heads_ + sel.first_q_head];
    } else {
      selector_.CountReuse();
    }
  }
  if (!jobs_.empty()) {
    RETURN_IF_ERROR(ScoreJobs(layer, plan, q, scores_device_.as<float>()));
    SelectPagesParams params;
    params.scores = scores_device_.as<float>();
    ASSIGN_OR_RETURN(params.jobs, StageVector(backend_, jobs_));
    params.num_jobs = static_cast<int>(jobs_.size());
    params.kv_len = plan.tables().kv_len;
    params.page_size = config_.page_size;
    params.max_pages = static_cast<int>(config_.BudgetPages());
    params.selected = device_rows_->pages();
    params.counts = device_rows_->counts();
    ASSIGN_OR_RETURN(params.out_rows, StageVector(backend_, job_rows_));
    params.selected_stride = device_rows_->stride();
    params.after_scoring = true;  // right after ScoreJobs
    RETURN_IF_ERROR(backend_->SelectPages(params));
  }
  if (selection_slot_device_ == nullptr || selection_slot_ != staged_selection_slot_) {
    ASSIGN_OR_RETURN(selection_slot_device_, StageVector(backend_, selection_slot_));
    staged_selection_slot_ = selection_slot_;
  }
  return absl::OkStatus();
}

absl::Status HybridAttention::Run(int layer, const AttentionPlan& plan, const void* q, void* out,
                                  int64_t q_row_stride) {
  const KvStoreConfig& c = store_->config();
  const int64_t packed = int64_t{num_q_heads_} * c.head_dim;
  if (q_row_stride == 0) q_row_stride = packed;
  if (q_row_stride < packed) {
    return absl::InvalidArgumentError("attention: q_row_stride is below a row's width");
  }
  if (layer == 0) {
    retired_scores_.clear();           // the previous step has finished
    selection_slot_device_ = nullptr;  // staged arrays last one step
    // Every selecting sequence gets its selection rows before any op of the step names
    // the row buffers: growing them later would free buffers that ops recorded earlier in
    // a replayable step still name.
    for (size_t b = 0; device_rows_ != nullptr && b < plan.batch().size(); ++b) {
      if (plan.selects(b)) RETURN_IF_ERROR(device_rows_->FirstRow(plan.batch()[b].seq).status());
    }
  }
  if (plan.any_selects()) RETURN_IF_ERROR(Select(layer, plan, {q, q_row_stride}));
  PagedAttentionParams params;
  params.kv = LayerView(layer);
  params.tables = plan.tables();
  params.q_indptr = plan.q_indptr();
  params.q = q;
  params.out = out;
  params.q_row_stride = q_row_stride;
  params.out_row_stride = packed;
  params.num_q_heads = num_q_heads_;
  params.scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  params.sink = config_.sink;
  params.local = plan.local();
  params.max_streaming_keys = config_.sink + plan.max_local();
  // The op before this one is the layer's RoPE + KV append (Engine::Forward calls Run right
  // after RopeAppend) unless scoring and top-k ran for it (Select), which write the
  // selection. A caller running other kernels in between must not take these hints.
  params.selection_settled = !plan.any_selects() || jobs_.empty();
  if (plan.any_selects() && device_rows_ != nullptr) {
    // The layer's rows: slots count from its first one.
    const int64_t first_row_of_layer = FirstSelectionRowOfLayer(layer);
    params.selection_slot = selection_slot_device_;
    params.selection_counts = device_rows_->counts() + first_row_of_layer;
    params.selected_pages = device_rows_->pages() + first_row_of_layer * device_rows_->stride();
    params.selection_stride = device_rows_->stride();
  } else if (plan.any_selects()) {
    params.selection_begin = selection_begin_device_;
    params.selection_end = selection_end_device_;
    params.selected_pages = selected_pages_device_;
  }
  if (plan.any_selects()) {
    params.selection_per_kv_head = config_.scoring == PageScoring::kPerKvHead;
    // Selecting sequences read at most the budget; the others fit in it.
    params.max_keys = config_.BudgetPages() * config_.page_size;
  }
  params.stats = &stats_;
  return backend_->PagedAttention(params);
}

}  // namespace lserve
