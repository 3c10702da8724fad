#include "kernels/cpu/attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/fast_exp.h"
#include "kernels/cpu/matmul.h"

namespace lserve::cpu {
namespace {

constexpr int kQueryBlock = kAttentionQueryBlock;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Whether any query in [p_lo, p_hi] sees any key in [a, b].
bool SpanVisible(const HeadWindow& window, int64_t p_lo, int64_t p_hi, int64_t a, int64_t b) {
  if (a > p_hi) return false;
  if (!window.streaming) return true;
  return a < window.sink || b > p_lo - window.local;
}

// Whether every query in [p_lo, p_hi] sees every key in [a, b]: no mask needed.
bool SpanFull(const HeadWindow& window, int64_t p_lo, int64_t p_hi, int64_t a, int64_t b) {
  if (b > p_lo) return false;
  if (!window.streaming) return true;
  return b < window.sink || p_hi - a < window.local;
}

struct BlockState {
  std::vector<float> queries;  // [kQueryBlock][head_dim]
  std::vector<float> scores;   // [kQueryBlock][span rows]
  std::vector<float> acc;      // [kQueryBlock][head_dim]
  std::vector<float> row_max;
  std::vector<float> row_sum;
};

void RunBlock(const AttentionParams& params, const AttentionTask& task, int32_t q_begin,
              int32_t q_end, BlockState& state, int64_t* visited) {
  const int d = params.head_dim;
  const int nq = q_end - q_begin;
  const int64_t p_lo = task.first_query_pos + q_begin;
  const int64_t p_hi = task.first_query_pos + q_end - 1;
  state.acc.assign(static_cast<size_t>(nq) * d, 0.0f);
  // The block's queries packed contiguously, so Q.K^T of a span is one small GEMM.
  state.queries.resize(static_cast<size_t>(nq) * d);
  for (int i = 0; i < nq; ++i) {
    const float* q = task.q + (q_begin + i) * task.q_stride;
    std::copy(q, q + d, state.queries.data() + int64_t{i} * d);
  }
  state.row_max.assign(nq, kNegInf);
  state.row_sum.assign(nq, 0.0f);
  for (int32_t s = 0; s < task.num_spans; ++s) {
    const KvSpan& span = task.spans[s];
    const int64_t a = span.first_pos;
    const int64_t b = a + span.num_rows - 1;
    if (span.num_rows <= 0 || !SpanVisible(task.window, p_lo, p_hi, a, b)) continue;
    ++*visited;
    const bool full = SpanFull(task.window, p_lo, p_hi, a, b);
    const float* k = task.k_base + span.page * task.page_stride + int64_t{span.row_begin} * d;
    const float* v = task.v_base + span.page * task.page_stride + int64_t{span.row_begin} * d;
    const int rows = span.num_rows;
    state.scores.resize(static_cast<size_t>(nq) * rows);
    Linear(state.queries.data(), nq, d, k, rows, nullptr, state.scores.data(), nullptr);
    for (int i = 0; i < nq; ++i) {
      const int64_t p = p_lo + i;
      float* scores = state.scores.data() + int64_t{i} * rows;
      float block_max = kNegInf;
      for (int r = 0; r < rows; ++r) {
        const bool visible = full || KeyVisible(task.window, p, a + r);
        scores[r] = visible ? scores[r] * params.scale : kNegInf;
        block_max = std::max(block_max, scores[r]);
      }
      if (block_max == kNegInf) continue;
      const float new_max = std::max(state.row_max[i], block_max);
      const float correction = std::exp(state.row_max[i] - new_max);  // exp(-inf) = 0
      float* acc = state.acc.data() + int64_t{i} * d;
      if (correction != 1.0f) {
        for (int c = 0; c < d; ++c) acc[c] *= correction;
      }
      // Masked scores are -inf and come out of the exp as exact zeros.
      const float sum = state.row_sum[i] * correction + ExpShiftedAndSum(scores, rows, new_max);
      for (int r = 0; r < rows; ++r) {
        const float w = scores[r];
        if (w == 0.0f) continue;
        const float* vr = v + int64_t{r} * d;
        for (int c = 0; c < d; ++c) acc[c] += w * vr[c];
      }
      state.row_max[i] = new_max;
      state.row_sum[i] = sum;
    }
  }
  for (int i = 0; i < nq; ++i) {
    float* out = task.out + (q_begin + i) * task.out_stride;
    const float inv = state.row_sum[i] > 0.0f ? 1.0f / state.row_sum[i] : 0.0f;
    const float* acc = state.acc.data() + int64_t{i} * d;
    for (int c = 0; c < d; ++c) out[c] = acc[c] * inv;
  }
}

}  // namespace

bool KeyVisible(const HeadWindow& window, int64_t query_pos, int64_t key_pos) {
  if (key_pos > query_pos) return false;
  if (!window.streaming) return true;
  return key_pos < window.sink || query_pos - key_pos < window.local;
}

int64_t DenseCausalTiles(int64_t num_queries, int64_t kv_len, int64_t page_size) {
  int64_t tiles = 0;
  const int64_t first = kv_len - num_queries;
  for (int64_t q = 0; q < num_queries; q += kQueryBlock) {
    const int64_t last_pos = first + std::min(num_queries, q + kQueryBlock) - 1;
    tiles += (last_pos + page_size) / page_size;
  }
  return tiles;
}

void PagedAttention(const AttentionParams& params, ThreadPool* pool, AttentionStats* stats) {
  // Work items are (task, query block) pairs, flattened so threads balance across heads.
  std::vector<std::pair<int32_t, int32_t>> items;
  int64_t total_tiles = 0;
  for (int32_t t = 0; t < static_cast<int32_t>(params.tasks.size()); ++t) {
    const AttentionTask& task = params.tasks[t];
    for (int32_t q = 0; q < task.num_queries; q += kQueryBlock) {
      items.emplace_back(t, q);
      total_tiles += task.num_spans;
    }
  }
  std::atomic<int64_t> visited{0};
  ParallelFor(pool, static_cast<int64_t>(items.size()), 1, [&](int64_t begin, int64_t end) {
    BlockState state;
    int64_t local_visited = 0;
    for (int64_t i = begin; i < end; ++i) {
      const AttentionTask& task = params.tasks[items[i].first];
      const int32_t q_begin = items[i].second;
      const int32_t q_end = std::min(task.num_queries, q_begin + kQueryBlock);
      RunBlock(params, task, q_begin, q_end, state, &local_visited);
    }
    visited += local_visited;
  });
  if (stats != nullptr) {
    stats->tiles_visited += visited.load();
    stats->tiles_total += total_tiles;
  }
}

void PagedAttentionReference(const AttentionParams& params) {
  const int d = params.head_dim;
  for (const AttentionTask& task : params.tasks) {
    for (int32_t i = 0; i < task.num_queries; ++i) {
      const float* q = task.q + i * task.q_stride;
      const int64_t p = task.first_query_pos + i;
      std::vector<double> scores;
      std::vector<const float*> values;
      double max_score = -std::numeric_limits<double>::infinity();
      for (int32_t s = 0; s < task.num_spans; ++s) {
        const KvSpan& span = task.spans[s];
        for (int32_t r = 0; r < span.num_rows; ++r) {
          if (!KeyVisible(task.window, p, span.first_pos + r)) continue;
          const int64_t offset = span.page * task.page_stride + int64_t{span.row_begin + r} * d;
          double dot = 0.0;
          for (int c = 0; c < d; ++c) dot += double{q[c]} * task.k_base[offset + c];
          scores.push_back(dot * params.scale);
          values.push_back(task.v_base + offset);
          max_score = std::max(max_score, scores.back());
        }
      }
      std::vector<double> out(d, 0.0);
      double sum = 0.0;
      for (size_t j = 0; j < scores.size(); ++j) {
        const double w = std::exp(scores[j] - max_score);
        sum += w;
        for (int c = 0; c < d; ++c) out[c] += w * values[j][c];
      }
      float* dst = task.out + i * task.out_stride;
      for (int c = 0; c < d; ++c) dst[c] = sum > 0.0 ? static_cast<float>(out[c] / sum) : 0.0f;
    }
  }
}

// Spans of one sequence's page list; pages past kv_len are skipped.
void AddPageSpans(const int32_t* table, const int32_t* page_indices, int64_t count, int64_t kv_len,
                  int64_t page, std::vector<KvSpan>* spans) {
  for (int64_t n = 0; n < count; ++n) {
    const int64_t i = page_indices == nullptr ? n : page_indices[n];
    if (i * page >= kv_len) continue;
    spans->push_back(
        {table[i], 0, static_cast<int32_t>(std::min(page, kv_len - i * page)), i * page});
  }
}

// Sink pages plus the ring pages covering [first_query_pos - local + 1, kv_len).
void AddStreamingSpans(const PageTableView& t, int b, int64_t page, int64_t first_query_pos,
                       int64_t local, std::vector<KvSpan>* spans) {
  const int64_t kv_len = t.kv_len[b];
  const int32_t* pages = t.stream_indices + t.stream_indptr[b];
  const int64_t sink = t.stream_sink_pages[b];
  for (int64_t i = 0; i < sink && i * page < kv_len; ++i) {
    spans->push_back(
        {pages[i], 0, static_cast<int32_t>(std::min(page, kv_len - i * page)), i * page});
  }
  const int64_t ring_start = t.ring_start;
  const int64_t window_start = std::max(ring_start, first_query_pos - local + 1);
  if (window_start >= kv_len) return;
  const int64_t slots = t.stream_indptr[b + 1] - t.stream_indptr[b] - sink;
  for (int64_t lp = (window_start - ring_start) / page; lp <= (kv_len - 1 - ring_start) / page;
       ++lp) {
    const int64_t first = ring_start + lp * page;
    spans->push_back(
        {pages[sink + lp % slots], 0, static_cast<int32_t>(std::min(page, kv_len - first)), first});
  }
}

absl::Status PagedAttention(const PagedAttentionParams& p, ThreadPool* pool) {
  const PagedKvLayer& kv = p.kv;
  if (kv.dtype != DType::kF32) {
    return absl::InvalidArgumentError("cpu attention reads float32 pools only");
  }
  if (kv.num_kv_heads <= 0 || p.num_q_heads % kv.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("attention: ", p.num_q_heads,
                                                   " query heads do not group over ",
                                                   kv.num_kv_heads, " KV heads"));
  }
  const int d = kv.head_dim;
  const int64_t page = kv.page_size;
  const int group = p.num_q_heads / kv.num_kv_heads;
  const PageTableView& t = p.tables;
  std::vector<std::vector<KvSpan>> lists;
  std::vector<AttentionTask> tasks;
  std::vector<size_t> task_list;
  std::vector<std::pair<int32_t, size_t>> selection_lists;  // (selection_begin, list)
  int64_t tiles_dense = 0;
  for (int b = 0; b < t.num_seqs; ++b) {
    const int64_t rows = p.q_indptr[b + 1] - p.q_indptr[b];
    if (rows <= 0) continue;
    const int64_t kv_len = t.kv_len[b];
    const int64_t start = kv_len - rows;
    int64_t streaming_list = -1, dense_list = -1;
    selection_lists.clear();
    for (int h = 0; h < p.num_q_heads; ++h) {
      const int kv_head = h / group;
      const bool streaming = kv.kv_head_streaming[kv_head] != 0;
      const int slot = kv.kv_head_slot[kv_head];
      const int64_t selection_index = int64_t{b} * p.num_q_heads + h;
      int32_t sel_begin = -1;
      int32_t sel_count = 0;
      if (p.selection_slot != nullptr) {
        const int32_t r = p.selection_slot[selection_index];
        if (r >= 0) {
          sel_begin = r * p.selection_stride;
          sel_count = p.selection_counts[r];
        }
      } else if (p.selection_begin != nullptr) {
        sel_begin = p.selection_begin[selection_index];
        sel_count = p.selection_end[selection_index] - sel_begin;
      }
      size_t list = 0;
      if (streaming) {
        if (streaming_list < 0) {
          streaming_list = static_cast<int64_t>(lists.size());
          lists.emplace_back();
          AddStreamingSpans(t, b, page, start, p.local[b], &lists.back());
        }
        list = streaming_list;
      } else if (sel_begin >= 0) {
        auto it = std::find_if(selection_lists.begin(), selection_lists.end(),
                               [&](const auto& e) { return e.first == sel_begin; });
        if (it == selection_lists.end()) {
          selection_lists.emplace_back(sel_begin, lists.size());
          lists.emplace_back();
          const int32_t* listed = p.selected_pages + sel_begin;
          AddPageSpans(t.dense_indices + t.dense_indptr[b], listed, sel_count, kv_len, page,
                       &lists.back());
          const int32_t newest = static_cast<int32_t>((kv_len + page - 1) / page - 1);
          if (p.selection_slot != nullptr && (sel_count == 0 || listed[sel_count - 1] < newest)) {
            AddPageSpans(t.dense_indices + t.dense_indptr[b], &newest, 1, kv_len, page,
                         &lists.back());
          }
          it = selection_lists.end() - 1;
        }
        list = it->second;
      } else {
        if (dense_list < 0) {
          dense_list = static_cast<int64_t>(lists.size());
          lists.emplace_back();
          AddPageSpans(t.dense_indices + t.dense_indptr[b], nullptr, (kv_len + page - 1) / page,
                       kv_len, page, &lists.back());
        }
        list = dense_list;
      }
      const KvPoolView& view = streaming ? kv.streaming : kv.dense;
      const float* base = static_cast<const float*>(view.base);
      AttentionTask task;
      task.q = static_cast<const float*>(p.q) + p.q_indptr[b] * p.q_row_stride + int64_t{h} * d;
      task.out = static_cast<float*>(p.out) + p.q_indptr[b] * p.out_row_stride + int64_t{h} * d;
      task.q_stride = p.q_row_stride;
      task.out_stride = p.out_row_stride;
      task.num_queries = static_cast<int32_t>(rows);
      task.first_query_pos = start;
      task.k_base = base + slot * page * d;
      task.v_base = base + (view.num_heads + slot) * page * d;
      task.page_stride = view.page_stride;
      task.window = {streaming, p.sink, p.local[b]};
      tasks.push_back(task);
      task_list.push_back(list);
      tiles_dense += DenseCausalTiles(rows, kv_len, page);
    }
  }
  for (size_t i = 0; i < tasks.size(); ++i) {
    tasks[i].spans = lists[task_list[i]].data();
    tasks[i].num_spans = static_cast<int32_t>(lists[task_list[i]].size());
  }
  AttentionParams params;
  params.head_dim = d;
  params.scale = p.scale;
  params.tasks = tasks;
  AttentionStats stats;
  stats.tiles_dense = tiles_dense;
  PagedAttention(params, pool, &stats);
  if (p.stats != nullptr) {
    p.stats->tiles_visited += stats.tiles_visited;
    p.stats->tiles_total += stats.tiles_total;
    p.stats->tiles_dense += stats.tiles_dense;
  }
  return absl::OkStatus();
}

}  // namespace lserve::cpu
