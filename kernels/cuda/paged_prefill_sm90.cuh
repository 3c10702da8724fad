// Internal to kernels/cuda: the pieces of the Hopper prefill kernel
// (paged_prefill_sm90.cu) apart from its producer and consumer loops: tile geometry and
// shared-memory layout, the CTA's barriers, work items, and the consumers' score, softmax
// and P V steps on wgmma accumulators.
#ifndef LSERVE_KERNELS_CUDA_PAGED_PREFILL_SM90_CUH_
#define LSERVE_KERNELS_CUDA_PAGED_PREFILL_SM90_CUH_

#include <cuda.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/attention_params.h"
#include "kernels/cuda/attention_args.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/paged_prefill_sm90.h"
#include "kernels/cuda/prefill_plan.h"
#include "kernels/cuda/wgmma_sm90.cuh"

namespace lserve::cuda::internal::prefill_sm90 {

constexpr int kConsumers = 2;  // warpgroups of 64 query rows
constexpr int kThreads = (kConsumers + 1) * 128;
constexpr int kRows = kSm90TileRows;  // query rows per tile
constexpr int kKeys = kSm90TileKeys;  // keys per K/V tile
static_assert(kRows == 64 * kConsumers);
constexpr int kStages = 2;
constexpr int kMostPagesPerTile = 8;   // tensor copies need pages of at least 16 keys
constexpr int kMostOrderedHeads = 64;  // KV heads the work order can sort dense-first
template <int kHeadDim>
struct Layout {
  static constexpr int kQBytes = kRows * kHeadDim * 2;
  static constexpr int kTileBytes = kKeys * kHeadDim * 2;
  static constexpr int kStageBytes = 2 * kTileBytes;  // K then V
  static constexpr int kSyncOffset = kQBytes + kStages * kStageBytes;
  static constexpr int kRowSourceOffset = kSyncOffset + 256;                 // after PipelineSync
  static constexpr int kHeadOrderOffset = kRowSourceOffset + 2 * kKeys * 8;  // 2 tiles of rows
  static constexpr int kBytes = kHeadOrderOffset + kMostOrderedHeads * 4;
  static constexpr int kAllocation = kBytes + 1024;  // room to align the base to 1 KB
};

struct Sm90Args : PrefillArgs {
  // 1: full K and V tiles come by tensor copies (pool_tensor_map.h), one per page and
  // 64-column block; 0: every tile by 16-byte cp.async per row.
  int tensor_copies;
};

// The pools' tensor maps, a __grid_constant__ kernel parameter.
struct PoolMaps {
  CUtensorMap dense;
  CUtensorMap streaming;
};

// The CTA's barriers: K and V of a ring stage landed (one producer arrival plus the
// tensor copies' bytes, or every producer thread's cp.async arrival) and
// free again (one arrival per consumer warp; K is released after the scores, V after
// P V, so the next K loads while P V runs), and the work item index the producer
// fetches for everyone; the KV heads in work order (dense heads first).
struct PipelineSync {
  uint64_t full_k[kStages];
  uint64_t full_v[kStages];
  uint64_t full_v_rows[kStages];  // V tiles by cp.async when the others come by tensor copies
  uint64_t empty_k[kStages];
  uint64_t empty_v[kStages];
  uint64_t work_full;   // the producer wrote work[round % 2]
  uint64_t work_empty;  // every consumer warp read it
  int64_t work[2];
  int dense_heads;  // the first dense_heads of the order are the dense ones
};

static_assert(sizeof(PipelineSync) <= 256);

#ifdef LSERVE_SM90A_DEVICE

// Named barriers (0 is __syncthreads): the producer warpgroup and each consumer
// warpgroup.
constexpr int kProducerBarrier = 1;
constexpr int kConsumerBarrier = 2;       // + consumer
constexpr int kBlockBytes = kKeys * 128;  // one 64-column block of a K/V tile
constexpr float kNegInf = -INFINITY;

// One work item resolved: which query tile of which sequence and KV head.
struct WorkItem {
  bool valid;
  int b;
  int kv_head;
  int tokens;
  int64_t first_pos;
  int64_t last_pos;
  int64_t first_row;
  bool streaming;
  KeyTileRuns runs;
};

// Work items run dense heads' first, streaming heads' after: the long dense items then
// start and end in waves, so the CTAs scanning one head's keys stay close together and
// share them in L2, and the short streaming items fill the tail. Within each kind, items
// go by query tile rank from the end (longest first), then sequence, then head.
__device__ __forceinline__ void OrderHeads(const Sm90Args& a, PipelineSync* sync, int* order) {
  const int heads = a.kv.num_kv_heads;
  int n = 0;
  if (heads <= kMostOrderedHeads) {
    for (int h = 0; h < heads; ++h) {
      if (!a.kv.kv_head_streaming[h]) order[n++] = h;
    }
    for (int h = 0, m = n; h < heads; ++h) {
      if (a.kv.kv_head_streaming[h]) order[m++] = h;
    }
  } else {
    n = heads;  // one block in head order (Resolve does not read `order` then)
  }
  sync->dense_heads = n;
}

__device__ __forceinline__ WorkItem Resolve(const Sm90Args& a, const PipelineSync* sync,
                                            const int* order, int64_t w) {
  WorkItem item{};
  const int all_heads = a.kv.num_kv_heads;
  const int64_t dense_items = int64_t{a.t.num_seqs} * a.tiles_per_seq * sync->dense_heads;
  const bool dense_block = w < dense_items;
  const int heads = dense_block ? sync->dense_heads : all_heads - sync->dense_heads;
  const int64_t v = dense_block ? w : w - dense_items;
  const int64_t per_rank = int64_t{a.t.num_seqs} * heads;
  const int tile_rank = static_cast<int>(v / per_rank);
  item.b = static_cast<int>((v % per_rank) / heads);
  const int head_index = static_cast<int>(v % heads) + (dense_block ? 0 : sync->dense_heads);
  item.kv_head = all_heads <= kMostOrderedHeads ? order[head_index] : head_index;
  const int64_t rows_of_seq = a.q_indptr[item.b + 1] - a.q_indptr[item.b];
  const int64_t tiles_of_seq = (rows_of_seq + a.tokens_per_tile - 1) / a.tokens_per_tile;
  const int64_t q_tile = tiles_of_seq - 1 - tile_rank;
  item.valid = q_tile >= 0;
  if (!item.valid) return item;
  const int64_t len = a.t.kv_len[item.b];
  const int64_t first_token = q_tile * a.tokens_per_tile;
  item.tokens =
      static_cast<int>(rows_of_seq - first_token < a.tokens_per_tile ? rows_of_seq - first_token
                                                                     : a.tokens_per_tile);
  item.first_pos = len - rows_of_seq + first_token;
  item.last_pos = item.first_pos + item.tokens - 1;
  item.first_row = a.q_indptr[item.b] + first_token;
  item.streaming = a.kv.kv_head_streaming[item.kv_head] != 0;
  item.runs =
      PlanKeyTiles(item.streaming, item.first_pos, item.last_pos, a.sink, a.local[item.b], kKeys);
  return item;
}

// Byte offset of (row, 16-byte chunk) in a swizzled tile of `rows` rows (wgmma_sm90.cuh).
__device__ __forceinline__ uint32_t SwizzledOffset(int rows, int row, int chunk) {
  return (chunk >> 3) * rows * 128 + row * 128 + (((chunk & 7) ^ (row & 7)) << 4);
}

__device__ __forceinline__ float Exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// An offset between keys, clamped into [-2 kKeys, 2 kKeys], which decides the same
// comparisons against offsets inside one tile.
__device__ __forceinline__ int32_t ClampOffset(int64_t offset) {
  return static_cast<int32_t>(offset < -2 * kKeys ? -2 * kKeys
                                                  : (offset > 2 * kKeys ? 2 * kKeys : offset));
}

// Online softmax over one tile's scores in place (raw Q.K products in, unnormalized
// probabilities out): masks when asked, moves the running max, returns through
// `correction` the factor the accumulated output must be scaled by.
struct RowState {
  float max[2];
  float sum[2];
  int64_t pos[2];
  bool valid[2];
};

template <bool kMasked>
__device__ __forceinline__ void SoftmaxTileAs(const Sm90Args& a, const WorkItem& item,
                                              int64_t local, int32_t key_tile, int t4,
                                              RowState& rows, float (&s)[64],
                                              float (&correction)[2]) {
  if constexpr (kMasked) {
    // KeyVisible in 32-bit offsets from this thread's first key of the tile: a key at
    // offset k is kept when k <= last[half] and (k < sink_end or k > window[half]).
    const int64_t first_key = int64_t{key_tile} * kKeys + 2 * t4;
    const int32_t sink_end = static_cast<int32_t>(ClampOffset(a.sink - first_key));
    int32_t last[2];
    int32_t window[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      last[half] = rows.valid[half] ? ClampOffset(rows.pos[half] - first_key) : -1;
      window[half] = item.streaming ? ClampOffset(rows.pos[half] - local - first_key) : -kKeys;
    }
#pragma unroll
    for (int j = 0; j < 16; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int half = e >> 1;
        const int32_t k = j * 8 + (e & 1);
        if (k > last[half] || (k >= sink_end && k <= window[half])) s[4 * j + e] = kNegInf;
      }
    }
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float tile_max = kNegInf;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      tile_max = fmaxf(tile_max, fmaxf(s[4 * j + 2 * half], s[4 * j + 2 * half + 1]));
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, 2));
    const float new_max = fmaxf(rows.max[half], tile_max);
    // Scores stay raw; the scale folds into one FMA before exp2. A row with no visible
    // key yet keeps max -inf and weights 0.
    const float base = new_max == kNegInf ? 0.0f : new_max * a.scale_log2;
    correction[half] = Exp2(rows.max[half] * a.scale_log2 - base);
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < 16; ++j) {
      s[4 * j + 2 * half] = Exp2(fmaf(s[4 * j + 2 * half], a.scale_log2, -base));
      s[4 * j + 2 * half + 1] = Exp2(fmaf(s[4 * j + 2 * half + 1], a.scale_log2, -base));
      sum += s[4 * j + 2 * half] + s[4 * j + 2 * half + 1];
    }
    rows.sum[half] = rows.sum[half] * correction[half] + sum;
    rows.max[half] = new_max;
  }
}

// Masked and unmasked tiles take separate copies of the softmax, so that neither shares
// a basic block with the wgmma wait that follows: ptxas would otherwise hoist the wait
// above the softmax and the softmax would no longer overlap the P V GEMM.
__device__ __forceinline__ void SoftmaxTile(const Sm90Args& a, const WorkItem& item, int64_t local,
                                            int32_t key_tile, int t4, RowState& rows,
                                            float (&s)[64], float (&correction)[2]) {
  if (KeyTileNeedsMask(item.streaming, item.first_pos, item.last_pos, a.sink, local, kKeys,
                       key_tile)) {
    SoftmaxTileAs<true>(a, item, local, key_tile, t4, rows, s, correction);
  } else {
    SoftmaxTileAs<false>(a, item, local, key_tile, t4, rows, s, correction);
  }
}

// Scales the accumulated output by each row half's softmax correction.
template <int kOut>
__device__ __forceinline__ void Rescale(const float (&correction)[2], float (&o)[kOut]) {
#pragma unroll
  for (int j = 0; j < kOut / 4; ++j) {
    o[4 * j] *= correction[0];
    o[4 * j + 1] *= correction[0];
    o[4 * j + 2] *= correction[1];
    o[4 * j + 3] *= correction[1];
  }
}

// P as bf16 A fragments, 16 keys each (the S accumulator's layout is the A layout).
__device__ __forceinline__ void PackP(const float (&s)[64], uint32_t (&p)[8][4]) {
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    p[kk][0] = PackBf16x2(s[8 * kk], s[8 * kk + 1]);
    p[kk][1] = PackBf16x2(s[8 * kk + 2], s[8 * kk + 3]);
    p[kk][2] = PackBf16x2(s[8 * kk + 4], s[8 * kk + 5]);
    p[kk][3] = PackBf16x2(s[8 * kk + 6], s[8 * kk + 7]);
  }
}

__device__ __forceinline__ void KeepLive(uint32_t (&p)[8][4]) {
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
#pragma unroll
    for (int i = 0; i < 4; ++i) asm volatile("" : "+r"(p[kk][i])::"memory");
  }
}

template <int kHeadDim>
__device__ __forceinline__ void IssueScores(uint32_t q_base, uint32_t k_base, float (&s)[64]) {
#pragma unroll
  for (int ks = 0; ks < kHeadDim / 16; ++ks) {
    const uint32_t column = (ks & 3) * 32;  // 16 bf16 columns inside a 128-byte row
    const uint64_t qd = sm90::MatrixDescriptor(q_base + (ks >> 2) * kRows * 128 + column, 16, 1024);
    const uint64_t kd = sm90::MatrixDescriptor(k_base + (ks >> 2) * kBlockBytes + column, 16, 1024);
    sm90::WgmmaSS128(s, qd, kd, ks > 0);
  }
}

template <int kHeadDim>
__device__ __forceinline__ void IssuePv(uint32_t v_base, const uint32_t (&p)[8][4],
                                        float (&o)[kHeadDim / 2]) {
#pragma unroll
  for (int kk = 0; kk < 8; ++kk) {
    const uint64_t vd = sm90::MatrixDescriptor(v_base + kk * 16 * 128, kBlockBytes, 1024);
    if constexpr (kHeadDim == 128) {
      sm90::WgmmaRS128(o, p[kk], vd);
    } else {
      sm90::WgmmaRS64(o, p[kk], vd);
    }
  }
}

#endif  // LSERVE_SM90A_DEVICE

}  // namespace lserve::cuda::internal::prefill_sm90

#endif  // LSERVE_KERNELS_CUDA_PAGED_PREFILL_SM90_CUH_
