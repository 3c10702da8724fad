// Block-sparse causal prefill attention over paged bf16 KV, FlashAttention-2 style
// (mma.sync m16n8k16, cp.async, sm_80 and later). A CTA takes a query tile of one
// sequence and one KV head: its 64 rows are the group's query heads times 64 / group
// consecutive tokens, so every K/V tile loaded serves the whole GQA group. The key tiles
// it visits come from PlanKeyTiles (prefill_plan.h): every earlier tile for a dense head,
// the sink and the local band for a streaming head; tiles that KeyTileNeedsMask marks get
// a token-exact mask. K/V tiles of 64 keys are gathered row by row through the page
// tables with 16-byte cp.async into a double-buffered, XOR-swizzled ring; rows past the
// query tile are zero-filled. Persistent CTAs take work items from an atomic counter,
// the query tiles nearest the end of each sequence (the longest) first.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/attention_args.h"
#include "kernels/cuda/attention_checks.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/paged_prefill_sm90.h"
#include "kernels/cuda/prefill_plan.h"

namespace lserve::cuda {
namespace {

using internal::KvLocation;
using internal::PrefillArgs;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kRows = 64;  // query rows per tile: tokens x the group's heads
constexpr int kKeys = 64;  // keys per K/V tile
constexpr int kMaxGroup = 16;
constexpr float kNegInf = -INFINITY;

template <int kHeadDim>
__host__ __device__ constexpr int TileBytes(int rows) {
  return rows * kHeadDim * 2;
}
template <int kHeadDim>
__host__ __device__ constexpr int PrefillSmemBytes() {
  return TileBytes<kHeadDim>(kRows) + 2 * 2 * TileBytes<kHeadDim>(kKeys);  // Q, 2 x (K, V)
}

// Copies key tile `tile` (positions tile * kKeys ...) of one KV head into a stage; rows
// past last_pos are zero-filled.
template <int kHeadDim>
__device__ __forceinline__ void LoadKvTile(const PrefillArgs& a, const KvPoolView& pool,
                                           bool streaming, int slot, int b, int64_t last_pos,
                                           int32_t tile, uint8_t* k_tile, uint8_t* v_tile) {
  constexpr int kChunks = kHeadDim / 8;
  const int64_t value_offset = internal::ValueOffset(pool, a.kv.page_size, kHeadDim);
#pragma unroll
  for (int i = 0; i < kKeys * kChunks / kThreads; ++i) {
    const int index = i * kThreads + threadIdx.x;
    const int row = index / kChunks;
    const int chunk = index % kChunks;
    const int64_t pos = int64_t{tile} * kKeys + row;
    const bool valid = pos <= last_pos;
    const uint16_t* key = a.q;
    if (valid) {
      const KvLocation at = streaming ? internal::StreamingLocation(a.t, a.kv.page_size, b, pos)
                                      : internal::DenseLocation(a.t, a.kv.page_size, b, pos);
      key = internal::KeyRow(pool, at, slot, a.kv.page_size, kHeadDim) + chunk * 8;
    }
    const uint32_t offset = internal::TileOffset<kHeadDim>(row, chunk);
    internal::CpAsync16(k_tile + offset, key, valid ? 16 : 0);
    internal::CpAsync16(v_tile + offset, valid ? key + value_offset : a.q, valid ? 16 : 0);
  }
}

template <int kHeadDim>
__global__ void __launch_bounds__(kThreads, 2) PrefillMmaSyncKernel(PrefillArgs a) {
  extern __shared__ __align__(128) uint8_t smem[];
  constexpr int kChunks = kHeadDim / 8;
  uint8_t* q_tile = smem;
  uint8_t* kv_ring = smem + TileBytes<kHeadDim>(kRows);
  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int g = lane >> 2;
  const int t4 = lane & 3;
  const int matrix = lane >> 3;
  __shared__ int64_t work;
  for (;;) {
    if (threadIdx.x == 0) work = atomicAdd(reinterpret_cast<unsigned long long*>(a.counters), 1ull);
    __syncthreads();
    const int64_t w = work;
    __syncthreads();  // everyone has read it before thread 0 takes the next one
    if (w >= a.work_items) break;
    // Work order: query tiles from the end of the sequences (the longest) first.
    const int64_t per_rank = int64_t{a.t.num_seqs} * a.kv.num_kv_heads;
    const int tile_rank = static_cast<int>(w / per_rank);
    const int b = static_cast<int>((w % per_rank) / a.kv.num_kv_heads);
    const int kv_head = static_cast<int>(w % a.kv.num_kv_heads);
    const int64_t rows_of_seq = a.q_indptr[b + 1] - a.q_indptr[b];
    const int64_t tiles_of_seq = (rows_of_seq + a.tokens_per_tile - 1) / a.tokens_per_tile;
    const int64_t q_tile_index = tiles_of_seq - 1 - tile_rank;
    if (q_tile_index < 0) continue;
    const int64_t len = a.t.kv_len[b];
    const int64_t first_token = q_tile_index * a.tokens_per_tile;  // within the sequence's rows
    const int tokens =
        static_cast<int>(rows_of_seq - first_token < a.tokens_per_tile ? rows_of_seq - first_token
                                                                       : a.tokens_per_tile);
    const int64_t first_pos = len - rows_of_seq + first_token;
    const int64_t last_pos = first_pos + tokens - 1;
    const bool streaming = a.kv.kv_head_streaming[kv_head] != 0;
    const int slot = a.kv.kv_head_slot[kv_head];
    const KvPoolView& pool = streaming ? a.kv.streaming : a.kv.dense;
    const int64_t local = a.local[b];
    const KeyTileRuns runs = PlanKeyTiles(streaming, first_pos, last_pos, a.sink, local, kKeys);
    const int64_t first_row = a.q_indptr[b] + first_token;

    // Q rows: row r is head r / tokens_per_tile of the group, token r % tokens_per_tile.
    for (int i = threadIdx.x; i < kRows * kChunks; i += kThreads) {
      const int r = i / kChunks;
      const int chunk = i % kChunks;
      const int h = r / a.tokens_per_tile;
      const int token = r % a.tokens_per_tile;
      const bool valid = h < a.group && token < tokens;
      const uint16_t* src = valid ? a.q + (first_row + token) * a.q_row_stride +
                                        int64_t{kv_head * a.group + h} * kHeadDim + chunk * 8
                                  : a.q;
      internal::CpAsync16(q_tile + internal::TileOffset<kHeadDim>(r, chunk), src, valid ? 16 : 0);
    }
    if (runs.count() > 0) {
      LoadKvTile<kHeadDim>(a, pool, streaming, slot, b, last_pos, runs.tile(0), kv_ring,
                           kv_ring + TileBytes<kHeadDim>(kKeys));
    }
    internal::CpAsyncCommit();

    uint32_t q_frag[kHeadDim / 16][4];
    float o[kHeadDim / 8][4];
#pragma unroll
    for (int n = 0; n < kHeadDim / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float row_max[2] = {kNegInf, kNegInf};
    float row_sum[2] = {0.0f, 0.0f};
    // The two rows this thread holds, as (token position, valid).
    int64_t row_pos[2];
    bool row_valid[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = warp * 16 + g + 8 * half;
      const int h = r / a.tokens_per_tile;
      const int token = r % a.tokens_per_tile;
      row_valid[half] = h < a.group && token < tokens;
      row_pos[half] = first_pos + token;
    }

    for (int32_t i = 0; i < runs.count(); ++i) {
      internal::CpAsyncWait<0>();
      __syncthreads();  // tile i is in; every warp is done with the other stage
      if (i == 0) {
#pragma unroll
        for (int ks = 0; ks < kHeadDim / 16; ++ks) {
          internal::LdMatrixX4(
              internal::SmemAddress(q_tile) +
                  internal::TileOffset<kHeadDim>(warp * 16 + (lane & 7) + (matrix & 1) * 8,
                                                 ks * 2 + (matrix >> 1)),
              q_frag[ks]);
        }
      }
      if (i + 1 < runs.count()) {
        uint8_t* next = kv_ring + ((i + 1) & 1) * 2 * TileBytes<kHeadDim>(kKeys);
        LoadKvTile<kHeadDim>(a, pool, streaming, slot, b, last_pos, runs.tile(i + 1), next,
                             next + TileBytes<kHeadDim>(kKeys));
      }
      internal::CpAsyncCommit();
      const int32_t key_tile = runs.tile(i);
      const uint32_t k_base =
          internal::SmemAddress(kv_ring + (i & 1) * 2 * TileBytes<kHeadDim>(kKeys));
      const uint32_t v_base = k_base + TileBytes<kHeadDim>(kKeys);

      // S = Q K^T: 16 rows x 64 keys per warp, eight 8-key column tiles.
      float s[kKeys / 8][4];
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < kHeadDim / 16; ++ks) {
#pragma unroll
        for (int nb = 0; nb < kKeys / 16; ++nb) {
          uint32_t kb[4];
          internal::LdMatrixX4(
              k_base + internal::TileOffset<kHeadDim>(nb * 16 + (matrix >> 1) * 8 + (lane & 7),
                                                      ks * 2 + (matrix & 1)),
              kb);
          internal::MmaBf16(s[2 * nb], q_frag[ks][0], q_frag[ks][1], q_frag[ks][2], q_frag[ks][3],
                            kb[0], kb[1]);
          internal::MmaBf16(s[2 * nb + 1], q_frag[ks][0], q_frag[ks][1], q_frag[ks][2],
                            q_frag[ks][3], kb[2], kb[3]);
        }
      }
      // Scale (log2 units) and mask; element e of s[n] is row half e / 2, key n * 8 + 2t + e % 2.
      const bool masked =
          KeyTileNeedsMask(streaming, first_pos, last_pos, a.sink, local, kKeys, key_tile);
#pragma unroll
      for (int n = 0; n < kKeys / 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int half = e >> 1;
          const int64_t key = int64_t{key_tile} * kKeys + n * 8 + 2 * t4 + (e & 1);
          const bool keep = !masked || (row_valid[half] &&
                                        KeyVisible(streaming, row_pos[half], key, a.sink, local));
          s[n][e] = keep ? s[n][e] * a.scale_log2 : kNegInf;
        }
      }
      // Online softmax per row: the quad of lanes sharing a row reduces its max.
      float correction[2];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float tile_max = kNegInf;
#pragma unroll
        for (int n = 0; n < kKeys / 8; ++n) {
          tile_max = fmaxf(tile_max, fmaxf(s[n][2 * half], s[n][2 * half + 1]));
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, 2));
        const float new_max = fmaxf(row_max[half], tile_max);
        // A row that has seen no key yet keeps max -inf: its weights are 0, nothing scales.
        const float base = new_max == kNegInf ? 0.0f : new_max;
        correction[half] = exp2f(row_max[half] - base);
        float sum = 0.0f;
#pragma unroll
        for (int n = 0; n < kKeys / 8; ++n) {
          s[n][2 * half] = exp2f(s[n][2 * half] - base);
          s[n][2 * half + 1] = exp2f(s[n][2 * half + 1] - base);
          sum += s[n][2 * half] + s[n][2 * half + 1];
        }
        row_sum[half] = row_sum[half] * correction[half] + sum;
        row_max[half] = new_max;
      }
#pragma unroll
      for (int n = 0; n < kHeadDim / 8; ++n) {
        o[n][0] *= correction[0];
        o[n][1] *= correction[0];
        o[n][2] *= correction[1];
        o[n][3] *= correction[1];
      }
      // O += P V: the S accumulators become bf16 A fragments, 16 keys at a time.
#pragma unroll
      for (int kk = 0; kk < kKeys / 16; ++kk) {
        const uint32_t a0 = internal::PackBf16x2(s[2 * kk][0], s[2 * kk][1]);
        const uint32_t a1 = internal::PackBf16x2(s[2 * kk][2], s[2 * kk][3]);
        const uint32_t a2 = internal::PackBf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
        const uint32_t a3 = internal::PackBf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
        for (int n = 0; n < kHeadDim / 8; n += 2) {
          uint32_t vb[4];
          internal::LdMatrixX4Trans(
              v_base + internal::TileOffset<kHeadDim>(kk * 16 + (matrix & 1) * 8 + (lane & 7),
                                                      n + (matrix >> 1)),
              vb);
          internal::MmaBf16(o[n], a0, a1, a2, a3, vb[0], vb[1]);
          internal::MmaBf16(o[n + 1], a0, a1, a2, a3, vb[2], vb[3]);
        }
      }
    }
    internal::CpAsyncWait<0>();
    // Normalize and write the rows this thread holds.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float sum = row_sum[half];
      sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 1);
      sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 2);
      const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
      if (!row_valid[half]) continue;
      const int r = warp * 16 + g + 8 * half;
      const int h = r / a.tokens_per_tile;
      const int token = r % a.tokens_per_tile;
      uint16_t* out = a.out + (first_row + token) * a.out_row_stride +
                      int64_t{kv_head * a.group + h} * kHeadDim + 2 * t4;
#pragma unroll
      for (int n = 0; n < kHeadDim / 8; ++n) {
        *reinterpret_cast<uint32_t*>(out + n * 8) =
            internal::PackBf16x2(o[n][2 * half] * inverse, o[n][2 * half + 1] * inverse);
      }
    }
    __syncthreads();  // the tiles are free for the next work item
  }
  // The last CTA to finish returns the counters to zero for the next launch.
  if (threadIdx.x == 0) {
    __threadfence();
    if (atomicAdd(a.counters + 2, 1) == static_cast<int>(gridDim.x) - 1) {
      *reinterpret_cast<unsigned long long*>(a.counters) = 0ull;
      a.counters[2] = 0;
    }
  }
}

template <int kHeadDim>
absl::Status Launch(PrefillArgs args, int num_sms, cudaStream_t stream) {
  static const cudaError_t configured = cudaFuncSetAttribute(
      PrefillMmaSyncKernel<kHeadDim>, cudaFuncAttributeMaxDynamicSharedMemorySize,
      PrefillSmemBytes<kHeadDim>());
  if (configured != cudaSuccess)
    return internal::CudaStatus(configured, "configuring PrefillMmaSyncKernel");
  static const int blocks_per_sm = [] {
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, PrefillMmaSyncKernel<kHeadDim>,
                                                      kThreads, PrefillSmemBytes<kHeadDim>()) !=
        cudaSuccess) {
      (void)cudaGetLastError();
      return 1;
    }
    return std::max(1, blocks);
  }();
  const int64_t ctas =
      std::clamp<int64_t>(args.work_items, 1, int64_t{std::max(1, num_sms)} * blocks_per_sm);
  PrefillMmaSyncKernel<kHeadDim>
      <<<static_cast<int>(ctas), kThreads, PrefillSmemBytes<kHeadDim>(), stream>>>(args);
  return internal::CheckLaunch("PrefillMmaSyncKernel");
}

bool CurrentDeviceRunsSm90() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return internal::PrefillSm90Supported(device);
}

// kAuto resolved for a device that does (or does not) run the sm_90a kernel.
PrefillKernel Resolve(PrefillKernel kernel, bool sm90) {
  if (kernel != PrefillKernel::kAuto) return kernel;
  static const bool mma_sync_asked = [] {
    const char* value = std::getenv("LSERVE_PREFILL_KERNEL");
    return value != nullptr && std::strcmp(value, "mma_sync") == 0;
  }();
  return sm90 && !mma_sync_asked ? PrefillKernel::kWgmma : PrefillKernel::kMmaSync;
}

}  // namespace

PrefillKernel ResolvePrefillKernel(PrefillKernel kernel) {
  return Resolve(kernel, CurrentDeviceRunsSm90());
}

PrefillTileShape PrefillTiles(PrefillKernel kernel) {
  if (ResolvePrefillKernel(kernel) == PrefillKernel::kWgmma) {
    return {internal::kSm90TileRows, internal::kSm90TileKeys};
  }
  return {kRows, kKeys};
}

absl::Status PagedPrefillAttention(const PagedAttentionParams& p, void* workspace, int num_sms,
                                   void* stream, PrefillKernel kernel) {
  RETURN_IF_ERROR(internal::CheckAttentionShape(p, "prefill attention", kMaxGroup));
  if (p.selection_begin != nullptr || p.selection_slot != nullptr) {
    return absl::UnimplementedError(
        "cuda prefill attention: page selection applies to decode rows; launch decode rows "
        "apart");
  }
  if (p.tables.max_queries <= 0) {
    return absl::InvalidArgumentError(
        "cuda prefill attention needs tables.max_queries (the most rows of one sequence)");
  }
  if (p.out_row_stride % 2 != 0) {
    return absl::InvalidArgumentError("cuda prefill attention: out rows must be 4-byte aligned");
  }
  if (workspace == nullptr) {
    return absl::InvalidArgumentError("cuda prefill attention needs its workspace");
  }
  if (p.tables.num_seqs == 0) return absl::OkStatus();
  // One device query per launch decides both the kernel and whether it can run.
  const bool sm90 = CurrentDeviceRunsSm90();
  kernel = Resolve(kernel, sm90);
  if (kernel == PrefillKernel::kWgmma) {
    if (!sm90) {
      return absl::FailedPreconditionError(
          "cuda prefill attention: the wgmma kernel needs compute capability 9.0 (sm_90a)");
    }
    return internal::PagedPrefillAttentionSm90(p, workspace, num_sms, stream);
  }
  const PrefillArgs args = internal::MakePrefillArgs(p, kRows, workspace);
  cudaStream_t s = internal::AsStream(stream);
  return p.kv.head_dim == 128 ? Launch<128>(args, num_sms, s) : Launch<64>(args, num_sms, s);
}

}  // namespace lserve::cuda
