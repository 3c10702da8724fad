// Internal to kernels/cuda: the kernel arguments the attention kernels share, made from
// the shared Params, and the prefill kernels' own (paged_prefill.cu,
// paged_prefill_sm90.cu). The decode kernels extend the base in paged_decode.cuh.
#ifndef LSERVE_KERNELS_CUDA_ATTENTION_ARGS_H_
#define LSERVE_KERNELS_CUDA_ATTENTION_ARGS_H_

#include <cstdint>

#include "kernels/attention_params.h"

namespace lserve::cuda::internal {

struct AttentionArgs {
  PagedKvLayer kv;
  PageTableView t;
  const int32_t* q_indptr;
  const uint16_t* q;
  uint16_t* out;
  int64_t q_row_stride;
  int64_t out_row_stride;
  int group;         // query heads per KV head
  float scale_log2;  // softmax scale times log2(e): exp2 of scaled scores
  int64_t sink;
  const int32_t* local;
};

inline void SetAttentionArgs(const PagedAttentionParams& p, AttentionArgs* args) {
  args->kv = p.kv;
  args->t = p.tables;
  args->q_indptr = p.q_indptr;
  args->q = static_cast<const uint16_t*>(p.q);
  args->out = static_cast<uint16_t*>(p.out);
  args->q_row_stride = p.q_row_stride;
  args->out_row_stride = p.out_row_stride;
  args->group = p.num_q_heads / p.kv.num_kv_heads;
  args->scale_log2 = p.scale * 1.4426950408889634f;
  args->sink = p.sink;
  args->local = p.local;
}

struct PrefillArgs : AttentionArgs {
  int tokens_per_tile;  // tile rows / group
  int tiles_per_seq;    // ceil(max_queries / tokens_per_tile)
  int64_t work_items;   // num_seqs * tiles_per_seq * num_kv_heads
  int32_t* counters;    // [0..1]: next work item, [2]: CTAs done (zero between launches)
};

// Work items are (query tile rank from the end, sequence, KV head), so the longest query
// tiles come first.
inline PrefillArgs MakePrefillArgs(const PagedAttentionParams& p, int tile_rows, void* workspace) {
  PrefillArgs args{};
  SetAttentionArgs(p, &args);
  args.tokens_per_tile = tile_rows / args.group;
  args.tiles_per_seq = (p.tables.max_queries + args.tokens_per_tile - 1) / args.tokens_per_tile;
  args.work_items = int64_t{p.tables.num_seqs} * args.tiles_per_seq * p.kv.num_kv_heads;
  args.counters = static_cast<int32_t*>(workspace);
  return args;
}

}  // namespace lserve::cuda::internal

#endif  // LSERVE_KERNELS_CUDA_ATTENTION_ARGS_H_
