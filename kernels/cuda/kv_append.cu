// The KV append with its page statistics, and the same append fused with the RoPE of the
// step's q and k rows.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/chained_launch.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/rope.h"

#ifdef __USE_FAST_MATH__
#error "kernels/cuda/kv_append.cu must be compiled without --use_fast_math"
#endif

namespace lserve::cuda {
namespace {

using internal::Bf16ToFloat;
using internal::KvLocation;

constexpr int kAppendThreads = 128;

struct AppendArgs {
  PagedKvLayer kv;
  PageTableView t;
  const int32_t* q_indptr;
  const uint16_t* k;
  const uint16_t* v;
  int64_t row_stride;
  // Fused RoPE (inv_freq set): k is rotated on its way into the pools and the q rows in
  // place by blocks past the append blocks.
  const int32_t* positions;
  const float* inv_freq;
  uint16_t* q;
  int num_q_heads;
  int64_t q_row_stride;
  int64_t num_tokens;
  // RopeAppendKvParams::inputs_settled: only k, v and q are read after the wait for the
  // previous kernel.
  bool inputs_settled;
};

// Folds a key into a page's running max and min with the CPU's comparisons (std::max,
// std::min), so signed zeros come out the same.
__device__ __forceinline__ void FoldIntoBounds(float key, float& high, float& low) {
  high = high < key ? key : high;
  low = key < low ? key : low;
}

// Row `row` of k (RoPE at its position) and v into the pool row at `key`: the 8 values at c
// and their rotation partners at c + head_dim / 2.
__device__ __forceinline__ void CopyRotatedChunk(const AppendArgs& a, int64_t row, int h, int c,
                                                 uint16_t* key, int64_t value_offset) {
  const int d = a.kv.head_dim;
  const int half = d / 2;
  const int64_t src = row * a.row_stride + int64_t{h} * d + c;
  float low[8], high[8];
  internal::LoadBf16<8>(a.k + src, low);
  internal::LoadBf16<8>(a.k + src + half, high);
  const float position = static_cast<float>(a.positions[row]);
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    float cos_a, sin_a;
    internal::RopeCosSin(position, a.inv_freq[c + e], &cos_a, &sin_a);
    internal::RotatePair(low[e], high[e], cos_a, sin_a);
  }
  internal::StoreBf16<8>(key + c, low);
  internal::StoreBf16<8>(key + c + half, high);
  *reinterpret_cast<uint4*>(key + value_offset + c) = *reinterpret_cast<const uint4*>(a.v + src);
  *reinterpret_cast<uint4*>(key + value_offset + c + half) =
      *reinterpret_cast<const uint4*>(a.v + src + half);
}

// A decode step's append of sequence b's one new row (`row` of k/v, at position `pos`) into
// KV head h with RoPE, by the block: the position's cos/sin table, the pool row and (dense
// heads) the logical page's stored statistics come first, before the wait for the kernel
// that writes k and v when the inputs are settled; then thread t rotates the 8 values at
// 8 t and their partners at 8 t + head_dim / 2, stores them with v, and folds them into
// kmax/kmin with the comparisons of AppendKernel's row loop.
__device__ void AppendRotatedRow(const AppendArgs& a, int b, int h, int64_t row, int64_t pos,
                                 float* table) {
  const int d = a.kv.head_dim;
  const int half = d / 2;
  internal::FillRopeTable(static_cast<float>(a.positions[row]), a.inv_freq, d, table);
  const int c = threadIdx.x * 8;
  if (c >= half) return;
  const int page_size = a.kv.page_size;
  const int logical = a.kv.logical_page_size;
  const bool streaming = a.kv.kv_head_streaming[h] != 0;
  const int slot = a.kv.kv_head_slot[h];
  const KvPoolView& pool = streaming ? a.kv.streaming : a.kv.dense;
  const KvLocation at = streaming ? internal::StreamingLocation(a.t, page_size, b, pos)
                                  : internal::DenseLocation(a.t, page_size, b, pos);
  uint16_t* key = internal::KeyRow(pool, at, slot, page_size, d);
  const bool fresh = pos % logical == 0;  // the row starts its logical page
  uint16_t* kmax = nullptr;
  uint16_t* kmin = nullptr;
  float max_low[8], max_high[8], min_low[8], min_high[8];
  if (!streaming) {
    kmax =
        internal::KmaxRow(pool, at.page, slot, at.row / logical, page_size, page_size / logical, d);
    kmin = kmax + internal::KminOffset(pool, page_size / logical, d);
    if (!fresh) {
      internal::LoadBf16<8>(kmax + c, max_low);
      internal::LoadBf16<8>(kmax + c + half, max_high);
      internal::LoadBf16<8>(kmin + c, min_low);
      internal::LoadBf16<8>(kmin + c + half, min_high);
    }
  }
  if (a.inputs_settled) ChainWait();
  const int64_t src = row * a.row_stride + int64_t{h} * d + c;
  float low[8], high[8];
  internal::LoadBf16<8>(a.k + src, low);
  internal::LoadBf16<8>(a.k + src + half, high);
  const uint4 value_low = *reinterpret_cast<const uint4*>(a.v + src);
  const uint4 value_high = *reinterpret_cast<const uint4*>(a.v + src + half);
#pragma unroll
  for (int e = 0; e < 8; ++e)
    internal::RotatePair(low[e], high[e], table[c + e], table[half + c + e]);
  internal::StoreBf16<8>(key + c, low);
  internal::StoreBf16<8>(key + c + half, high);
  const int64_t value_offset = internal::ValueOffset(pool, page_size, d);
  *reinterpret_cast<uint4*>(key + value_offset + c) = value_low;
  *reinterpret_cast<uint4*>(key + value_offset + c + half) = value_high;
  if (streaming) return;
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const float key_low = Bf16ToFloat(internal::FloatToBf16(low[e]));
    const float key_high = Bf16ToFloat(internal::FloatToBf16(high[e]));
    if (fresh) {
      max_low[e] = min_low[e] = key_low;
      max_high[e] = min_high[e] = key_high;
      continue;
    }
    FoldIntoBounds(key_low, max_low[e], min_low[e]);
    FoldIntoBounds(key_high, max_high[e], min_high[e]);
  }
  internal::StoreBf16<8>(kmax + c, max_low);
  internal::StoreBf16<8>(kmax + c + half, max_high);
  internal::StoreBf16<8>(kmin + c, min_low);
  internal::StoreBf16<8>(kmin + c + half, min_high);
}

// One block per (sequence, KV head) and stride of logical pages: it copies the rows that
// land in each logical page (rotating k first when RoPE is fused), then (dense heads)
// folds them into the page's kmax/kmin in row order, with the CPU's comparisons (so
// signed zeros come out the same). Blocks past those rotate the q rows when RoPE is fused.
// A decode row (one row for the sequence) with RoPE takes AppendRotatedRow.
__global__ void __launch_bounds__(kAppendThreads) AppendKernel(AppendArgs a) {
  if (!a.inputs_settled) ChainWait();
  extern __shared__ float table[];  // fused RoPE: cos [half], then sin [half]
  const int num_kv_heads = a.kv.num_kv_heads;
  if (blockIdx.x >= a.t.num_seqs * num_kv_heads) {
    const int64_t token =
        int64_t{blockIdx.x - a.t.num_seqs * num_kv_heads} * gridDim.y + blockIdx.y;
    if (token < a.num_tokens) {
      internal::FillRopeTable(static_cast<float>(a.positions[token]), a.inv_freq, a.kv.head_dim,
                              table);
      if (a.inputs_settled) ChainWait();
      internal::RotateTokenHeads<internal::kBf16PerVector>(a.q + token * a.q_row_stride,
                                                           a.num_q_heads, a.kv.head_dim, table);
    }
    return;
  }
  const int b = blockIdx.x / num_kv_heads;
  const int h = blockIdx.x % num_kv_heads;
  const int64_t first_row = a.q_indptr[b];
  const int64_t rows = a.q_indptr[b + 1] - first_row;
  if (rows <= 0) return;
  const int64_t len = a.t.kv_len[b];
  if (rows == 1 && a.inv_freq != nullptr) {
    if (blockIdx.y == 0) AppendRotatedRow(a, b, h, first_row, len - 1, table);
    return;
  }
  if (a.inputs_settled) ChainWait();
  const int64_t first_pos = len - rows;
  const int d = a.kv.head_dim;
  const int page_size = a.kv.page_size;
  const int logical = a.kv.logical_page_size;
  const bool streaming = a.kv.kv_head_streaming[h] != 0;
  const int slot = a.kv.kv_head_slot[h];
  const KvPoolView& pool = streaming ? a.kv.streaming : a.kv.dense;
  const int64_t value_offset = internal::ValueOffset(pool, page_size, d);
  const int vectors = d / 8;
  for (int64_t lp = first_pos / logical + blockIdx.y; lp <= (len - 1) / logical; lp += gridDim.y) {
    const int64_t lo = max(first_pos, lp * logical);
    const int64_t hi = min(len, (lp + 1) * logical);
    // With RoPE a thread takes a chunk and its rotation partner: half the chunks.
    const int step_vectors = a.inv_freq != nullptr ? vectors / 2 : vectors;
    for (int64_t i = threadIdx.x; i < (hi - lo) * step_vectors; i += blockDim.x) {
      const int64_t pos = lo + i / step_vectors;
      const int c = static_cast<int>(i % step_vectors) * 8;
      const KvLocation at = streaming ? internal::StreamingLocation(a.t, page_size, b, pos)
                                      : internal::DenseLocation(a.t, page_size, b, pos);
      if (a.inv_freq != nullptr) {
        CopyRotatedChunk(a, first_row + pos - first_pos, h, c,
                         internal::KeyRow(pool, at, slot, page_size, d), value_offset);
        continue;
      }
      uint16_t* key = internal::KeyRow(pool, at, slot, page_size, d) + c;
      const int64_t src = (first_row + pos - first_pos) * a.row_stride + int64_t{h} * d + c;
      *reinterpret_cast<uint4*>(key) = *reinterpret_cast<const uint4*>(a.k + src);
      *reinterpret_cast<uint4*>(key + value_offset) = *reinterpret_cast<const uint4*>(a.v + src);
    }
    if (streaming) continue;
    __syncthreads();  // the rows above are visible to the whole block
    const KvLocation start = internal::DenseLocation(a.t, page_size, b, lp * logical);
    const int j = start.row / logical;
    uint16_t* kmax =
        internal::KmaxRow(pool, start.page, slot, j, page_size, page_size / logical, d);
    uint16_t* kmin = kmax + internal::KminOffset(pool, page_size / logical, d);
    const uint16_t* first_key = internal::KeyRow(pool, start, slot, page_size, d);
    // A logical page that this append starts begins from its first key; one it continues
    // folds the new keys into the statistics of the keys before them (bf16 values, so
    // stored statistics are the exact running max and min).
    const bool fresh = lo == lp * logical;
    const int first_new = static_cast<int>(lo - lp * logical);
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
      float high = fresh ? Bf16ToFloat(first_key[c]) : Bf16ToFloat(kmax[c]);
      float low = fresh ? high : Bf16ToFloat(kmin[c]);
      for (int r = fresh ? 1 : first_new; r < hi - lp * logical; ++r) {
        FoldIntoBounds(Bf16ToFloat(first_key[int64_t{r} * d + c]), high, low);
      }
      kmax[c] = internal::FloatToBf16(high);
      kmin[c] = internal::FloatToBf16(low);
    }
    __syncthreads();
  }
}

// Enough blocks per (sequence, head) for a prefill chunk's logical pages.
int AppendBlocksPerHead(const AppendKvParams& p) {
  return std::min(64, p.tables.max_queries / p.kv.logical_page_size + 2);
}

}  // namespace

absl::Status AppendKv(const AppendKvParams& p, void* stream) {
  RETURN_IF_ERROR(internal::CheckLayer(p.kv, "KV append"));
  if (p.row_stride % 8 != 0 || !internal::IsAligned16(p.k) || !internal::IsAligned16(p.v)) {
    return absl::InvalidArgumentError("cuda KV append: K/V rows must be 16-byte aligned");
  }
  if (p.tables.num_seqs == 0 || p.kv.num_kv_heads == 0) return absl::OkStatus();
  AppendArgs args{p.kv,
                  p.tables,
                  p.q_indptr,
                  static_cast<const uint16_t*>(p.k),
                  static_cast<const uint16_t*>(p.v),
                  p.row_stride,
                  nullptr,
                  nullptr,
                  nullptr,
                  0,
                  0,
                  0,
                  false};
  const dim3 grid(p.tables.num_seqs * p.kv.num_kv_heads, AppendBlocksPerHead(p));
  LaunchChained(AppendKernel, grid, kAppendThreads, 0, internal::AsStream(stream), args);
  return internal::CheckLaunch("AppendKernel");
}

absl::Status RopeAppendKv(const RopeAppendKvParams& p, void* stream) {
  const AppendKvParams& append = p.append;
  const RopeParams& q = p.q_rope;
  const RopeParams& k = p.k_rope;
  RETURN_IF_ERROR(internal::CheckLayer(append.kv, "RoPE + KV append"));
  if (append.k != k.x) {
    return absl::InvalidArgumentError("cuda RoPE + KV append: append.k must be k_rope.x");
  }
  const int d = append.kv.head_dim;
  const int64_t q_stride = q.token_stride == 0 ? int64_t{q.num_heads} * d : q.token_stride;
  const int64_t k_stride = k.token_stride == 0 ? int64_t{k.num_heads} * d : k.token_stride;
  // One pass when the layouts allow it (k rotated where the append reads it, and everything
  // ApplyRope would accept); otherwise the three ops one after another, which also report
  // what is wrong with the arguments.
  const bool fused =
      q.dtype == DType::kBF16 && k.dtype == DType::kBF16 && q.head_dim == d && k.head_dim == d &&
      d % 16 == 0 && d <= kMaxRopeHeadDim && k.num_heads == append.kv.num_kv_heads &&
      k_stride == append.row_stride && q.num_tokens == k.num_tokens && q.num_tokens >= 0 &&
      q.num_tokens <= 0x7FFFFFFF && q.x != nullptr && append.v != nullptr &&
      q.positions == k.positions && q.inv_freq == k.inv_freq && q.positions != nullptr &&
      q.inv_freq != nullptr && q.num_heads > 0 && q_stride >= int64_t{q.num_heads} * d &&
      q_stride % 8 == 0 && internal::IsAligned16(q.x) && append.row_stride % 8 == 0 &&
      internal::IsAligned16(append.k) && internal::IsAligned16(append.v) &&
      append.tables.num_seqs > 0 && append.kv.num_kv_heads > 0 &&
      append.tables.num_seqs * int64_t{append.kv.num_kv_heads} < (int64_t{1} << 30);
  if (!fused) {
    RETURN_IF_ERROR(ApplyRope(q, stream));
    RETURN_IF_ERROR(ApplyRope(k, stream));
    return AppendKv(append, stream);
  }
  if (q.num_tokens == 0) return absl::OkStatus();
  const AppendArgs args{append.kv,
                        append.tables,
                        append.q_indptr,
                        static_cast<const uint16_t*>(append.k),
                        static_cast<const uint16_t*>(append.v),
                        append.row_stride,
                        q.positions,
                        q.inv_freq,
                        static_cast<uint16_t*>(q.x),
                        q.num_heads,
                        q_stride,
                        q.num_tokens,
                        p.inputs_settled};
  const int blocks_per_head = AppendBlocksPerHead(append);
  const int64_t query_blocks = (q.num_tokens + blocks_per_head - 1) / blocks_per_head;
  const dim3 grid(
      static_cast<unsigned>(append.tables.num_seqs * append.kv.num_kv_heads + query_blocks),
      blocks_per_head);
  LaunchChained(AppendKernel, grid, kAppendThreads, d * sizeof(float), internal::AsStream(stream),
                args);
  return internal::CheckLaunch("AppendKernel (RoPE fused)");
}

}  // namespace lserve::cuda
