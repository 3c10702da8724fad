// Block-sparse attention over a paged KV cache (CPU backend).
//
// Every query head of every sequence is one AttentionTask whose keys come from a list of
// spans: runs of rows inside physical pages. The caller decides which spans a head may
// see (all pages for dense heads, sink + ring pages for streaming heads, selected pages
// for sparse decode); the kernel visits only spans that some query of a block can see
// and applies the token-exact mask inside them.
#ifndef LSERVE_KERNELS_CPU_ATTENTION_H_
#define LSERVE_KERNELS_CPU_ATTENTION_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "common/thread_pool.h"
#include "kernels/attention_params.h"

namespace lserve::cpu {

// Rows [row_begin, row_begin + num_rows) of physical page `page`; row r holds the key at
// position first_pos + (r - row_begin).
struct KvSpan {
  int32_t page = 0;
  int32_t row_begin = 0;
  int32_t num_rows = 0;
  int64_t first_pos = 0;
};

// Key j is visible to the query at position p iff j <= p and, for streaming heads,
// (j < sink || p - j < local).
struct HeadWindow {
  bool streaming = false;
  int64_t sink = 0;
  int64_t local = 0;
};

struct AttentionTask {
  const float* q = nullptr;  // num_queries rows of head_dim, q_stride apart
  float* out = nullptr;      // num_queries rows of head_dim, out_stride apart
  int64_t q_stride = 0;
  int64_t out_stride = 0;
  int32_t num_queries = 0;
  int64_t first_query_pos = 0;  // query i sits at position first_query_pos + i
  const KvSpan* spans = nullptr;
  int32_t num_spans = 0;
  // Row r of page p: k_base + p * page_stride + r * head_dim (and likewise for v).
  const float* k_base = nullptr;
  const float* v_base = nullptr;
  int64_t page_stride = 0;
  HeadWindow window;
};

struct AttentionParams {
  int head_dim = 0;
  float scale = 0.0f;
  std::span<const AttentionTask> tasks;
};

// Queries processed together against each span; a tile is (query block, span).
inline constexpr int kAttentionQueryBlock = 32;

// Work counters (tiles_dense is left to callers that know what dense causal attention
// would have visited).
using AttentionStats = ::lserve::AttentionStats;

// Tiles dense causal attention visits for num_queries queries ending at kv_len over pages
// of page_size tokens.
int64_t DenseCausalTiles(int64_t num_queries, int64_t kv_len, int64_t page_size);

bool KeyVisible(const HeadWindow& window, int64_t query_pos, int64_t key_pos);

// Rows that see no key at all come out as zeros.
void PagedAttention(const AttentionParams& params, ThreadPool* pool,
                    AttentionStats* stats = nullptr);

// Spans of sequence b's dense pages: `count` page indices (page_indices[n], or n itself
// when page_indices is null) into its page list `table`; pages past kv_len are skipped.
void AddPageSpans(const int32_t* table, const int32_t* page_indices, int64_t count, int64_t kv_len,
                  int64_t page, std::vector<KvSpan>* spans);
// Spans a streaming head of sequence b reads for queries from first_query_pos on: its
// sink pages plus the ring pages covering [first_query_pos - local + 1, kv_len).
void AddStreamingSpans(const PageTableView& tables, int b, int64_t page, int64_t first_query_pos,
                       int64_t local, std::vector<KvSpan>* spans);

// The launcher over the page tables: builds each head's spans (sink + ring window for
// streaming heads, every or the selected dense pages for dense heads) and runs
// PagedAttention on them. Float32 pools only.
absl::Status PagedAttention(const PagedAttentionParams& params, ThreadPool* pool);

// Naive double-precision version: every query against every listed key.
void PagedAttentionReference(const AttentionParams& params);

}  // namespace lserve::cpu

#endif  // LSERVE_KERNELS_CPU_ATTENTION_H_
