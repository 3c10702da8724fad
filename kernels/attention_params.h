// Params of the paged attention ops (DESIGN.md §3), shared by every backend: appending
// K/V with the page statistics, hybrid sparse attention over the page tables, and page
// scoring for decode selection. The pools follow kvstore/kv_pool.h's layout and the page
// tables kvstore/page_table_arrays.h's CSR form; every pointer is backend memory.
#ifndef LSERVE_KERNELS_ATTENTION_PARAMS_H_
#define LSERVE_KERNELS_ATTENTION_PARAMS_H_

#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/layer_params.h"
#include "kernels/params_equality.h"

namespace lserve {

// One layer of one pool. In a page (page_stride elements from the previous one), with
// H = num_heads, P the page size, D the head dim and LP = P / logical_page_size:
//   K of slot s at s*P*D, V at (H + s)*P*D, row r of either at + r*D;
//   kmax of slot s at 2*H*P*D + s*LP*D, kmin at 2*H*P*D + (H + s)*LP*D (dense pool only).
struct KvPoolView {
  void* base = nullptr;
  int64_t page_stride = 0;
  int num_heads = 0;
  LSERVE_PARAMS_EQUALITY(KvPoolView);
};

struct PagedKvLayer {
  DType dtype = DType::kF32;
  int page_size = 0;
  int logical_page_size = 0;
  int head_dim = 0;
  int num_kv_heads = 0;
  const int32_t* kv_head_slot = nullptr;       // [num_kv_heads] index inside its pool
  const uint8_t* kv_head_streaming = nullptr;  // [num_kv_heads] 1: streaming head
  KvPoolView dense;
  KvPoolView streaming;
  LSERVE_PARAMS_EQUALITY(PagedKvLayer);
};

// A batch's page tables (see PageTableArrays for the meaning of each array).
struct PageTableView {
  int num_seqs = 0;
  int32_t ring_start = 0;
  const int32_t* kv_len = nullptr;
  const int32_t* dense_indptr = nullptr;
  const int32_t* dense_indices = nullptr;
  const int32_t* stream_indptr = nullptr;
  const int32_t* stream_indices = nullptr;
  const int32_t* stream_sink_pages = nullptr;
  // Host values describing the batch, for sizing launches without reading device memory:
  // at least the longest kv_len (the engine rounds it up so launches recur across steps)
  // and the most rows of one sequence (0: unknown), and the number of leading sequences
  // that have one row each and hold every sequence that reads selected pages (0:
  // unknown), so a backend may run them apart from the multi-row ones.
  int32_t max_kv_len = 0;
  int32_t max_queries = 0;
  int32_t single_row_prefix = 0;
  LSERVE_PARAMS_EQUALITY(PageTableView);
};

// Rows [q_indptr[b], q_indptr[b+1]) belong to sequence b and are its newest tokens: row
// q_indptr[b] + i sits at position kv_len[b] - n_b + i, n_b the sequence's row count.

// Writes every row's K and V into its pool and, for dense heads, folds the key into its
// logical page's kmax/kmin (a logical page's first key starts them afresh).
struct AppendKvParams {
  PagedKvLayer kv;
  PageTableView tables;
  const int32_t* q_indptr = nullptr;  // [num_seqs + 1]
  const void* k = nullptr;            // [rows][row_stride], num_kv_heads * head_dim used
  const void* v = nullptr;
  int64_t row_stride = 0;
  LSERVE_PARAMS_EQUALITY(AppendKvParams);
};

// RoPE of q (in place) and k (on its way into the pools) fused with the KV append:
// Backend::RopeAppendKv.
struct RopeAppendKvParams {
  RopeParams q_rope;
  RopeParams k_rope;
  AppendKvParams append;
  // Host hint: the op right before this one (e.g. the QKV projection) writes only the q, k
  // and v rows; the tables, lengths, positions, inv_freq and pools are settled, so
  // backends may read them while it still runs.
  bool inputs_settled = false;
  LSERVE_PARAMS_EQUALITY(RopeAppendKvParams);
};

// Work counters: (query block, KV tile) tiles visited out of those listed, and what
// dense causal attention would have visited.
struct AttentionStats {
  int64_t tiles_visited = 0;
  int64_t tiles_total = 0;
  int64_t tiles_dense = 0;
};

// Causal attention of every row and query head. Query head h reads KV head
// h / (num_q_heads / num_kv_heads). Dense heads see every earlier key, or, when a
// selection range is set for (b, h), only the listed pages; streaming heads see keys
// j < sink or with pos - j < local[b]. Rows that see no key come out as zeros.
struct PagedAttentionParams {
  PagedKvLayer kv;
  PageTableView tables;
  const int32_t* q_indptr = nullptr;  // [num_seqs + 1]
  const void* q = nullptr;            // [rows][q_row_stride], head h at h * head_dim
  void* out = nullptr;                // [rows][out_row_stride]
  int64_t q_row_stride = 0;
  int64_t out_row_stride = 0;
  int num_q_heads = 0;
  float scale = 0.0f;
  int64_t sink = 0;
  const int32_t* local = nullptr;  // [num_seqs] streaming window of the sequence's queries
  // Dense-head page selection: for b * num_q_heads + h, pages
  // selected_pages[selection_begin .. selection_end) (indices into the sequence's dense
  // page list, ascending); selection_begin < 0 means every page. Null: no selection.
  const int32_t* selection_begin = nullptr;
  const int32_t* selection_end = nullptr;
  const int32_t* selected_pages = nullptr;
  // Device-resident form, used instead of begin/end when selection_slot is set: for
  // b * num_q_heads + h, a slot r >= 0 names the pages
  // selected_pages[r * selection_stride ...] (selection_counts[r] of them, ascending), read
  // together with the sequence's newest page when they lack it (a selection reused after
  // the history grew a page); r < 0 means every page.
  const int32_t* selection_slot = nullptr;
  const int32_t* selection_counts = nullptr;
  int32_t selection_stride = 0;
  // Host hint: the query heads of each KV head share one selection (scoring per KV head),
  // so backends may read the pages once for the group. Must be true of the selection.
  bool selection_per_kv_head = false;
  AttentionStats* stats = nullptr;  // host counters, added to when set
  // Host hint: the most keys one head of the batch reads (0: tables.max_kv_len), e.g. the
  // selection budget; backends size split-K launches with it.
  int64_t max_keys = 0;
  // Host hint: the most keys one streaming head of the batch reads (sink + window; 0:
  // unknown), so backends may split those short ranges less than the dense heads' ones.
  int64_t max_streaming_keys = 0;
  // Host hint: the op right before this one (e.g. the step's KV append) writes no
  // selection array, page table or length, and of the pools only each sequence's newest
  // row; backends may then start reading K/V while it still runs.
  bool selection_settled = false;
  LSERVE_PARAMS_EQUALITY(PagedAttentionParams);
};

// The launch over sequences [first, first + count) of `p`: the same rows, pages and
// outputs, with every per-sequence array advanced (CSR indptr entries stay absolute).
// The host hints keep the whole batch's values, which bound the slice's.
inline PagedAttentionParams SliceSequences(const PagedAttentionParams& p, int first, int count) {
  PagedAttentionParams slice = p;
  PageTableView& t = slice.tables;
  t.num_seqs = count;
  t.kv_len += first;
  t.dense_indptr += first;
  t.stream_indptr += first;
  t.stream_sink_pages += first;
  t.single_row_prefix =
      p.tables.single_row_prefix > first
          ? (p.tables.single_row_prefix - first < count ? p.tables.single_row_prefix - first
                                                        : count)
          : 0;
  slice.q_indptr += first;
  slice.local += first;
  const int64_t heads = int64_t{first} * p.num_q_heads;
  if (slice.selection_begin != nullptr) slice.selection_begin += heads;
  if (slice.selection_end != nullptr) slice.selection_end += heads;
  if (slice.selection_slot != nullptr) slice.selection_slot += heads;
  return slice;
}

// A multi-row launch as two launches, when tables.single_row_prefix marks its leading
// single-row sequences: those (max_queries 1, with the page selections) and the rest
// (without selections: only single-row sequences select). False when not marked.
inline bool SplitAtSingleRowPrefix(const PagedAttentionParams& p, PagedAttentionParams* single_rows,
                                   PagedAttentionParams* rest) {
  const int prefix = p.tables.single_row_prefix;
  if (p.tables.max_queries <= 1 || prefix <= 0 || prefix >= p.tables.num_seqs) return false;
  *single_rows = SliceSequences(p, 0, prefix);
  single_rows->tables.max_queries = 1;
  *rest = SliceSequences(p, prefix, p.tables.num_seqs - prefix);
  rest->selection_begin = rest->selection_end = rest->selection_slot = nullptr;
  rest->selected_pages = rest->selection_counts = nullptr;
  return true;
}

// One scoring job: the dense pages of sequence `seq` for KV head `kv_head`, scored for
// query heads [first_q_head, first_q_head + num_q_heads) of row `q_row`.
struct PageScoreJob {
  int32_t seq = 0;
  int32_t kv_head = 0;
  int32_t first_q_head = 0;
  int32_t num_q_heads = 0;
  int32_t q_row = 0;
  int32_t out_offset = 0;
};

// scores[out_offset + i] for each physical page i < ceil(kv_len / P) of the job's
// sequence: the max over its logical pages holding tokens, and over the job's query
// heads, of S = sum_c max(q_c kmax_c, q_c kmin_c), an upper bound of q.k on the page.
struct ScorePagesParams {
  PagedKvLayer kv;
  PageTableView tables;
  const void* q = nullptr;
  int64_t q_row_stride = 0;
  const PageScoreJob* jobs = nullptr;
  int num_jobs = 0;
  float* scores = nullptr;
  // Host hint: the op right before this one is the step's KV append, which writes q and
  // only each sequence's newest key and its logical page's statistics; backends may then
  // start copying the older statistics while it runs.
  bool after_append = false;
  LSERVE_PARAMS_EQUALITY(ScorePagesParams);
};

// Decode page selection from ScorePages' scores: for each job, with n = ceil(kv_len / P)
// pages of its sequence, the newest page plus the max_pages - 1 best others (equal scores
// prefer the lower index), or every page when n <= max_pages, written ascending to row r
// of `selected` (selected[r * stride ...], stride = selected_stride or max_pages) with their
// number in counts[r], where r = out_rows[j], or j when out_rows is null.
struct SelectPagesParams {
  const float* scores = nullptr;
  const PageScoreJob* jobs = nullptr;
  int num_jobs = 0;
  const int32_t* kv_len = nullptr;  // [num_seqs], indexed by job.seq
  int page_size = 0;
  int max_pages = 0;
  int32_t* selected = nullptr;        // [rows][stride]
  int32_t* counts = nullptr;          // [rows]
  const int32_t* out_rows = nullptr;  // [num_jobs], optional
  int32_t selected_stride = 0;
  // Host hint: the op right before this one is the ScorePages that writes `scores`, and
  // it writes nothing else this op reads; backends may read the jobs, lengths and output
  // rows while it runs.
  bool after_scoring = false;
  LSERVE_PARAMS_EQUALITY(SelectPagesParams);
};

}  // namespace lserve

#endif  // LSERVE_KERNELS_ATTENTION_PARAMS_H_
