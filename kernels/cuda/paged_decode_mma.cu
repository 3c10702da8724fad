// Tensor-core decode attention (mma.sync m16n8k16, bf16 in, float32 out). The query heads
// of a KV head are the rows of a 16-row tile (rows past the group are zero) and keys its
// columns, so each K/V byte is read once for the whole group. Each warp streams its own
// 16-key tiles through a cp.async ring in shared memory (16-byte chunks XOR-swizzled by
// row, so ldmatrix is conflict-free), computes S = Q K^T, reuses the S accumulator as the
// A operand of O += P V (P split into bf16 high and low parts, so the weights keep 16
// mantissa bits), and keeps a float32 online softmax per row. Warps merge in shared
// memory; the last split CTA of a head to finish merges the splits.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/chained_launch.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/paged_decode.cuh"

namespace lserve::cuda::internal {
namespace {

constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kTileKeys = 16;
constexpr int kMmaStages = 3;
constexpr int kMaxGroup = 8;

template <int kHeadDim>
__host__ __device__ constexpr int StageBytes() {
  return 2 * kTileKeys * kHeadDim * 2;  // K and V
}
template <int kHeadDim>
__host__ __device__ constexpr int SmemBytes() {
  return kMmaWarps * kMmaStages * StageBytes<kHeadDim>();
}

// d += A B with A 16x16 (rows 8-15 zero: a1 = a3 = 0) and B 16x8.
__device__ __forceinline__ void Mma(float (&d)[4], uint32_t a0, uint32_t a2, uint32_t b0,
                                    uint32_t b1) {
  MmaBf16(d, a0, 0u, a2, 0u, b0, b1);
}

// Flash-decoding's combine, fused: of the `splits` CTAs of query heads [first_head, + heads)
// of sequence b, the one that finishes last merges their partial results (the weights of
// split s are exp2(max_s - max)) and writes the output row, then resets the arrival counter
// for the next launch. `smem` holds at least heads * (splits + 1) floats.
template <int kHeadDim>
__device__ void CombineSplitsIfLast(const DecodeArgs& a, int b, int first_head, int heads,
                                    int splits, int64_t row, uint8_t* smem) {
  __shared__ bool last;
  __threadfence();  // this CTA's partial results are visible before its arrival counts
  __syncthreads();
  int32_t* arrivals = a.arrivals + int64_t{b} * a.num_q_heads + first_head;
  if (threadIdx.x == 0) {
    last = atomicAdd(arrivals, 1) == splits - 1;
    if (last) *arrivals = 0;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  float* weight = reinterpret_cast<float*>(smem);  // [heads][splits]
  float* inverse_sum = weight + heads * splits;    // [heads]
  // Partial results of head h, split s: entry first + h * a.splits + s.
  const int64_t first = (int64_t{b} * a.num_q_heads + first_head) * a.splits;
  for (int i = threadIdx.x; i < heads * splits; i += blockDim.x) {
    weight[i] = __ldcg(a.partial_ml + 2 * (first + (i / splits) * a.splits + i % splits));
  }
  __syncthreads();
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  for (int h = warp; h < heads; h += blockDim.x >> 5) {
    float merged_max = kNegInf;
    for (int s = lane; s < splits; s += 32) merged_max = fmaxf(merged_max, weight[h * splits + s]);
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      merged_max = fmaxf(merged_max, __shfl_xor_sync(0xFFFFFFFFu, merged_max, offset));
    }
    float sum = 0.0f;
    for (int s = lane; s < splits; s += 32) {
      const float m = weight[h * splits + s];
      const float w = m == kNegInf ? 0.0f : exp2f(m - merged_max);
      weight[h * splits + s] = w;
      sum += w * __ldcg(a.partial_ml + 2 * (first + h * a.splits + s) + 1);
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      sum += __shfl_xor_sync(0xFFFFFFFFu, sum, offset);
    }
    if (lane == 0) inverse_sum[h] = sum > 0.0f ? 1.0f / sum : 0.0f;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < heads * kHeadDim; i += blockDim.x) {
    const int h = i / kHeadDim;
    const int c = i % kHeadDim;
    const float* partial = a.partial_o + (first + int64_t{h} * a.splits) * kHeadDim + c;
    float out = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float w = weight[h * splits + s];
      if (w != 0.0f) out += w * __ldcg(partial + int64_t{s} * kHeadDim);
    }
    a.out[row * a.out_row_stride + int64_t{first_head + h} * kHeadDim + c] =
        FloatToBf16(out * inverse_sum[h]);
  }
}

template <int kHeadDim>
__global__ void __launch_bounds__(kMmaThreads, 2) DecodeMmaKernel(DecodeArgs a) {
  // Without early loads, wait for the previous kernel before reading anything.
  if (!a.early_loads) ChainWait();
  extern __shared__ __align__(128) uint8_t smem[];
  constexpr int kChunks = kHeadDim / 8;  // 16-byte chunks per row
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;  // the row (query head) this lane holds
  const int t = lane & 3;
  const int split = blockIdx.x;
  const int kv_head = blockIdx.y / a.ctas_per_kv_head;
  const int own_head = blockIdx.y % a.ctas_per_kv_head;
  const int b = blockIdx.z;
  const bool streaming = a.kv.kv_head_streaming[kv_head] != 0;
  // A streaming head's short range has fewer splits: the CTAs past them have no work.
  const int splits = streaming ? a.streaming_splits : a.splits;
  if (split >= splits) return;
  const int slot = a.kv.kv_head_slot[kv_head];
  const KvPoolView& pool = streaming ? a.kv.streaming : a.kv.dense;
  const int64_t value_offset = ValueOffset(pool, a.kv.page_size, kHeadDim);
  const int32_t len = a.t.kv_len[b];
  const int32_t dense_first = a.t.dense_indptr[b];
  const int64_t row = a.q_indptr[b + 1] - 1;
  const int first_q = kv_head * a.group;
  const int64_t sel = int64_t{b} * a.num_q_heads + first_q;
  // A query head's selection: a slot, or the begin of its list (< 0: every page).
  const bool by_slot = a.selection_slot != nullptr;
  const int32_t* selection = by_slot ? a.selection_slot : a.selection_begin;
  const bool selected = !streaming && selection != nullptr && selection[sel] >= 0;
  // The group shares its loads unless its heads selected different pages; then each query
  // head runs in its own CTA.
  bool shared = true;
  if (selected) {
    for (int h = 1; h < a.group; ++h) {
      shared = shared && selection[sel + h] == selection[sel] &&
               (by_slot || a.selection_end[sel + h] == a.selection_end[sel]);
    }
  }
  if (shared && own_head != 0) return;
  const int pass = shared ? 0 : own_head;
  KeyRange range{0, len, 0, 0, 0, 0, 0};
  if (streaming) {
    range.mode = 2;
    range.sink_end = static_cast<int32_t>(min(a.sink, int64_t{len}));
    range.window_start = max(range.sink_end, len - a.local[b]);
    range.count = range.sink_end + (len - range.window_start);
  } else if (selected) {
    range.mode = 1;
    if (by_slot) {
      const int32_t slot_row = selection[sel + pass];
      range.page_begin = slot_row * a.selection_stride;
      range.listed = a.selection_counts[slot_row];
      range.newest = ((len + (1 << a.page_shift) - 1) >> a.page_shift) - 1;
      const bool has_newest =
          range.listed > 0 && a.selected_pages[range.page_begin + range.listed - 1] >= range.newest;
      range.count = (range.listed + (has_newest ? 0 : 1)) << a.page_shift;
    } else {
      range.page_begin = selection[sel + pass];
      range.listed = a.selection_end[sel + pass] - range.page_begin;
      range.count = range.listed << a.page_shift;
    }
  }
  // Splits start at multiples of the tile, so a tile of a page range lies in one page.
  const int32_t chunk = ((range.count + splits - 1) / splits + kTileKeys - 1) & ~(kTileKeys - 1);
  const int32_t begin = split * chunk;
  const int32_t end = min(range.count, begin + chunk);
  const bool row_active = g < a.group && (shared || g == pass);

  float o[kHeadDim / 8][4];
#pragma unroll
  for (int n = 0; n < kHeadDim / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float running_max = kNegInf;
  float running_sum = 0.0f;

  uint8_t* ring = smem + warp * kMmaStages * StageBytes<kHeadDim>();
  const int32_t tiles = end > begin ? (end - begin + kTileKeys - 1) / kTileKeys : 0;
  const int32_t mine = tiles > warp ? (tiles - warp + kMmaWarps - 1) / kMmaWarps : 0;
  uint64_t masks = 0;  // valid keys of each stage, 16 bits per stage
  // Consecutive lanes copy consecutive 16-byte chunks of a key row, so every copy
  // instruction reads whole rows (full sectors).
  constexpr int kRowsPerCopy = 32 / kChunks;
  // Page ranges (modes 0 and 1): the tile's page (history index, physical page), loaded
  // one tile ahead of its copies so the table lookups overlap the previous tile's math.
  auto tile_page = [&](int32_t i) -> int2 {
    const int32_t first_key = begin + (warp + i * kMmaWarps) * kTileKeys;
    if (range.mode == 2 || i >= mine) return make_int2(0, 0);
    int32_t index = first_key >> a.page_shift;
    if (range.mode == 1) {
      index = index < range.listed ? a.selected_pages[range.page_begin + index] : range.newest;
    }
    return make_int2(index, a.t.dense_indices[dense_first + index]);
  };
  int2 next_page = tile_page(0);
  auto issue = [&](int32_t i) {
    const int stage = i % kMmaStages;
    const int32_t first_key = begin + (warp + i * kMmaWarps) * kTileKeys;
    uint8_t* k_tile = ring + stage * StageBytes<kHeadDim>();
    uint8_t* v_tile = k_tile + kTileKeys * kHeadDim * 2;
    const int c = lane % kChunks;
    uint32_t keys = 0;
    if (range.mode != 2) {
      // The tile lies in one page and its valid keys are a prefix (before the range's end
      // and the history's), so one base address and one count describe it.
      const int2 page = next_page;
      next_page = tile_page(i + 1);
      const int32_t row0 = first_key & ((1 << a.page_shift) - 1);
      int32_t valid_rows = min(kTileKeys, end - first_key);
      if (range.mode == 1) valid_rows = min(valid_rows, len - (page.x << a.page_shift) - row0);
      const uint16_t* tile_key =
          KeyRow(pool, {page.y, row0}, slot, a.kv.page_size, kHeadDim) + c * 8;
#pragma unroll
      for (int j = 0; j < kTileKeys / kRowsPerCopy; ++j) {
        const int key_row = j * kRowsPerCopy + lane / kChunks;
        const bool valid = key_row < valid_rows;
        const uint16_t* key = valid ? tile_key + key_row * kHeadDim : a.q;
        CpAsync16(k_tile + TileOffset<kHeadDim>(key_row, c), key, valid ? 16 : 0);
        CpAsync16(v_tile + TileOffset<kHeadDim>(key_row, c), valid ? key + value_offset : a.q,
                  valid ? 16 : 0);
      }
      keys = valid_rows >= kTileKeys ? 0xFFFFu : (valid_rows > 0 ? (1u << valid_rows) - 1 : 0u);
    } else {
#pragma unroll
      for (int j = 0; j < kTileKeys / kRowsPerCopy; ++j) {
        const int key_row = j * kRowsPerCopy + lane / kChunks;
        const int32_t v = first_key + key_row;
        KvLocation at{0, 0};
        const bool valid = v < end && Locate(a, range, b, len, v, dense_first, &at);
        const uint16_t* key =
            valid ? KeyRow(pool, at, slot, a.kv.page_size, kHeadDim) + c * 8 : a.q;
        CpAsync16(k_tile + TileOffset<kHeadDim>(key_row, c), key, valid ? 16 : 0);
        CpAsync16(v_tile + TileOffset<kHeadDim>(key_row, c), valid ? key + value_offset : a.q,
                  valid ? 16 : 0);
        const uint32_t lanes = __ballot_sync(0xFFFFFFFFu, valid);
#pragma unroll
        for (int r = 0; r < kRowsPerCopy; ++r) {
          keys |= ((lanes >> (r * kChunks)) & 1u) << (j * kRowsPerCopy + r);
        }
      }
    }
    masks = (masks & ~(uint64_t{0xFFFF} << (16 * stage))) | (uint64_t{keys} << (16 * stage));
  };
  auto issue_prologue = [&] {
    for (int s = 0; s < kMmaStages; ++s) {
      if (s < mine) issue(s);
      CpAsyncCommit();
    }
  };
  // Early loads: the previous kernel (the step's KV append) writes only each sequence's
  // newest key, so a warp whose first tiles do not hold it copies them while that kernel
  // still runs, then waits for it.
  bool prologue_issued = false;
  if (a.early_loads) {
    auto holds_newest_key = [&](int32_t i) {
      const int32_t first_key = begin + (warp + i * kMmaWarps) * kTileKeys;
      if (range.mode == 2) return first_key + kTileKeys >= range.count;
      const int32_t row0 = first_key & ((1 << a.page_shift) - 1);
      return (tile_page(i).x << a.page_shift) + row0 + kTileKeys >= len;
    };
    bool early = true;
    for (int s = 0; s < kMmaStages && s < mine; ++s) early = early && !holds_newest_key(s);
    if (early) {
      issue_prologue();
      prologue_issued = true;
    }
    ChainWait();
  }
  if (!prologue_issued) issue_prologue();
  // Q as A fragments: row g, channels ks*16 + 2t (+1) and ks*16 + 8 + 2t (+1).
  uint32_t q[kHeadDim / 16][2];
  const uint32_t* q_row = reinterpret_cast<const uint32_t*>(
      a.q + row * a.q_row_stride + int64_t{first_q + (row_active ? g : 0)} * kHeadDim);
#pragma unroll
  for (int ks = 0; ks < kHeadDim / 16; ++ks) {
    q[ks][0] = row_active ? q_row[ks * 8 + t] : 0u;
    q[ks][1] = row_active ? q_row[ks * 8 + 4 + t] : 0u;
  }
  const int matrix = lane >> 3;
  for (int32_t i = 0; i < mine; ++i) {
    CpAsyncWait<kMmaStages - 1>();  // tile i has landed
    __syncwarp();
    const int stage = i % kMmaStages;
    const uint32_t k_base = SmemAddress(ring + stage * StageBytes<kHeadDim>());
    const uint32_t v_base = k_base + kTileKeys * kHeadDim * 2;
    const uint32_t keys = static_cast<uint32_t>(masks >> (16 * stage)) & 0xFFFFu;
    // S = Q K^T over two 8-key column tiles.
    float s[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
#pragma unroll
    for (int ks = 0; ks < kHeadDim / 16; ++ks) {
      uint32_t kb[4];
      LdMatrixX4(
          k_base + TileOffset<kHeadDim>((matrix >> 1) * 8 + (lane & 7), ks * 2 + (matrix & 1)), kb);
      Mma(s[0], q[ks][0], q[ks][1], kb[0], kb[1]);
      Mma(s[1], q[ks][0], q[ks][1], kb[2], kb[3]);
    }
    // Row g holds keys 2t, 2t + 1 (tile 0) and 8 + 2t, 9 + 2t (tile 1).
    float p[4] = {s[0][0], s[0][1], s[1][0], s[1][1]};
    const int key_of[4] = {2 * t, 2 * t + 1, 8 + 2 * t, 9 + 2 * t};
    float tile_max = kNegInf;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      p[e] = (keys >> key_of[e]) & 1u ? p[e] * a.scale_log2 : kNegInf;
      tile_max = fmaxf(tile_max, p[e]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, 1));
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, 2));
    const float new_max = fmaxf(running_max, tile_max);
    float correction = 1.0f;
    if (new_max == kNegInf) {
      p[0] = p[1] = p[2] = p[3] = 0.0f;
    } else {
      correction = exp2f(running_max - new_max);  // exp2(-inf) = 0
#pragma unroll
      for (int e = 0; e < 4; ++e) p[e] = exp2f(p[e] - new_max);
    }
    running_sum = running_sum * correction + (p[0] + p[1]) + (p[2] + p[3]);
    running_max = new_max;
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; ++n) {
      o[n][0] *= correction;
      o[n][1] *= correction;
    }
    // P as A fragments, high and low bf16 parts.
    const uint32_t hi0 = PackBf16x2(p[0], p[1]);
    const uint32_t hi2 = PackBf16x2(p[2], p[3]);
    const uint32_t lo0 =
        PackBf16x2(p[0] - __uint_as_float(hi0 << 16), p[1] - __uint_as_float(hi0 & 0xFFFF0000u));
    const uint32_t lo2 =
        PackBf16x2(p[2] - __uint_as_float(hi2 << 16), p[3] - __uint_as_float(hi2 & 0xFFFF0000u));
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; n += 2) {
      uint32_t vb[4];
      LdMatrixX4Trans(
          v_base + TileOffset<kHeadDim>((matrix & 1) * 8 + (lane & 7), n + (matrix >> 1)), vb);
      Mma(o[n], hi0, hi2, vb[0], vb[1]);
      Mma(o[n], lo0, lo2, vb[0], vb[1]);
      Mma(o[n + 1], hi0, hi2, vb[2], vb[3]);
      Mma(o[n + 1], lo0, lo2, vb[2], vb[3]);
    }
    __syncwarp();  // the stage is read before it is refilled
    // Refill it with the tile kMmaStages ahead: the other stages stay in flight meanwhile.
    if (i + kMmaStages < mine) issue(i + kMmaStages);
    CpAsyncCommit();
  }
  CpAsyncWait<0>();
  running_sum += __shfl_xor_sync(0xFFFFFFFFu, running_sum, 1);
  running_sum += __shfl_xor_sync(0xFFFFFFFFu, running_sum, 2);

  // Merge the warps: [warp][row] max and sum, then [warp][row][channel] accumulators.
  __syncthreads();
  float* slot_max = reinterpret_cast<float*>(smem);
  float* slot_sum = slot_max + kMmaWarps * kMaxGroup;
  float* slot_acc = slot_sum + kMmaWarps * kMaxGroup;
  if (t == 0) {
    slot_max[warp * kMaxGroup + g] = running_max;
    slot_sum[warp * kMaxGroup + g] = running_sum;
  }
#pragma unroll
  for (int n = 0; n < kHeadDim / 8; ++n) {
    float* acc = slot_acc + (warp * kMaxGroup + g) * kHeadDim + n * 8 + 2 * t;
    acc[0] = o[n][0];
    acc[1] = o[n][1];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kMaxGroup * kHeadDim; i += kMmaThreads) {
    const int h = i / kHeadDim;
    const int c = i % kHeadDim;
    if (h >= a.group || !(shared || h == pass)) continue;
    float merged_max = kNegInf;
    for (int w = 0; w < kMmaWarps; ++w) merged_max = fmaxf(merged_max, slot_max[w * kMaxGroup + h]);
    float sum = 0.0f;
    float out = 0.0f;
    if (merged_max != kNegInf) {
      for (int w = 0; w < kMmaWarps; ++w) {
        const float m = slot_max[w * kMaxGroup + h];
        if (m == kNegInf) continue;
        const float weight = exp2f(m - merged_max);
        sum += weight * slot_sum[w * kMaxGroup + h];
        out += weight * slot_acc[(w * kMaxGroup + h) * kHeadDim + c];
      }
    }
    const int head = first_q + h;
    if (splits == 1) {
      a.out[row * a.out_row_stride + int64_t{head} * kHeadDim + c] =
          FloatToBf16(sum > 0.0f ? out / sum : 0.0f);
    } else {
      const int64_t part = (int64_t{b} * a.num_q_heads + head) * a.splits + split;
      a.partial_o[part * kHeadDim + c] = out;
      if (c == 0) {
        a.partial_ml[2 * part] = merged_max;
        a.partial_ml[2 * part + 1] = sum;
      }
    }
  }
  if (splits > 1) {
    const int first_head = shared ? 0 : pass;
    const int heads = shared ? a.group : 1;
    CombineSplitsIfLast<kHeadDim>(a, b, first_q + first_head, heads, splits, row, smem);
  }
}

template <int kHeadDim>
absl::Status Launch(const DecodeArgs& args, cudaStream_t stream) {
  static_assert(kMmaWarps * kMaxGroup * (kHeadDim + 2) * 4 <= SmemBytes<kHeadDim>());
  static const cudaError_t configured =
      cudaFuncSetAttribute(DecodeMmaKernel<kHeadDim>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           SmemBytes<kHeadDim>());
  if (configured != cudaSuccess) return CudaStatus(configured, "configuring DecodeMmaKernel");
  const dim3 grid(args.splits, args.kv.num_kv_heads * args.ctas_per_kv_head, args.t.num_seqs);
  LaunchChained(DecodeMmaKernel<kHeadDim>, grid, kMmaThreads, SmemBytes<kHeadDim>(), stream, args);
  return CheckLaunch("DecodeMmaKernel");
}

}  // namespace

int DecodeMmaBlocksPerSm(int head_dim) {
  auto query = [](auto kernel, int smem) {
    int blocks = 0;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) !=
            cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kMmaThreads, smem) !=
            cudaSuccess) {
      (void)cudaGetLastError();
      return 2;
    }
    return std::max(1, blocks);
  };
  static const int d128 = query(DecodeMmaKernel<128>, SmemBytes<128>());
  static const int d64 = query(DecodeMmaKernel<64>, SmemBytes<64>());
  return head_dim == 128 ? d128 : d64;
}

absl::Status LaunchDecodeMma(const DecodeArgs& args, cudaStream_t stream) {
  if (args.group > kMaxGroup) {
    return absl::InvalidArgumentError("tensor-core decode: at most 8 query heads per KV head");
  }
  return args.kv.head_dim == 128 ? Launch<128>(args, stream) : Launch<64>(args, stream);
}

}  // namespace lserve::cuda::internal
