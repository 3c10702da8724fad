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

#include "common/thread_pool.h"

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

// Work counters: tiles visited out of all tiles listed. `tiles_dense` is left to callers
// that know what dense causal attention would have visited (for speedup accounting).
struct AttentionStats {
  int64_t tiles_visited = 0;
  int64_t tiles_total = 0;
  int64_t tiles_dense = 0;
};

// Tiles dense causal attention visits for num_queries queries ending at kv_len over pages
// of page_size tokens.
int64_t DenseCausalTiles(int64_t num_queries, int64_t kv_len, int64_t page_size);

bool KeyVisible(const HeadWindow& window, int64_t query_pos, int64_t key_pos);

// Rows that see no key at all come out as zeros.
void PagedAttention(const AttentionParams& params, ThreadPool* pool,
                    AttentionStats* stats = nullptr);

// Naive double-precision version: every query against every listed key.
void PagedAttentionReference(const AttentionParams& params);

}  // namespace lserve::cpu

#endif  // LSERVE_KERNELS_CPU_ATTENTION_H_
