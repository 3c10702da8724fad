// Block-sparse causal prefill attention over paged bf16 KV for Hopper (sm_90a), in the
// style of FlashAttention-3: warpgroup MMA (wgmma) from shared memory, warp
// specialization and an mbarrier pipeline. A CTA has three warpgroups: a producer that
// gathers K/V tiles of 128 keys through the page tables with 16-byte cp.async into a
// two-stage ring (completion signalled on mbarriers, so nothing waits on cp.async
// groups), and two consumers of 64 query rows each. A consumer computes S = Q K^T with
// Q and K read from shared memory, runs the online softmax on the accumulators, and
// computes O += P V with P straight from registers and V read MN-major, so nothing is
// transposed. Registers move from the producer to the consumers (setmaxnreg). As in the
// mma.sync kernel (paged_prefill.cu), a 128-row query tile is the GQA group's heads times
// 128 / group tokens, the key tiles come from PlanKeyTiles and tiles that
// KeyTileNeedsMask marks get a token-exact mask. Persistent CTAs walk the work items in a
// fixed stride, the query tiles nearest the end of each sequence (the longest) first.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/paged_prefill_sm90.h"
#include "kernels/cuda/prefill_plan.h"
#include "kernels/cuda/wgmma_sm90.cuh"

namespace lserve::cuda::internal {
namespace {

constexpr int kConsumers = 2;  // warpgroups of 64 query rows
constexpr int kThreads = (kConsumers + 1) * 128;
constexpr int kRows = kSm90TileRows;  // query rows per tile
constexpr int kKeys = kSm90TileKeys;  // keys per K/V tile
static_assert(kRows == 64 * kConsumers);
constexpr int kStages = 2;
constexpr float kLog2e = 1.4426950408889634f;
template <int kHeadDim>
struct Layout {
  static constexpr int kQBytes = kRows * kHeadDim * 2;
  static constexpr int kTileBytes = kKeys * kHeadDim * 2;
  static constexpr int kStageBytes = 2 * kTileBytes;  // K then V
  static constexpr int kBarrierOffset = kQBytes + kStages * kStageBytes;
  static constexpr int kRowSourceOffset = kBarrierOffset + 3 * kStages * 8;
  static constexpr int kBytes = kRowSourceOffset + 2 * kKeys * 8;
  static constexpr int kAllocation = kBytes + 1024;  // room to align the base to 1 KB
};

struct Sm90Args {
  PagedKvLayer kv;
  PageTableView t;
  const int32_t* q_indptr;
  const uint16_t* q;
  uint16_t* out;
  int64_t q_row_stride;
  int64_t out_row_stride;
  int group;
  int tokens_per_tile;  // kRows / group
  int tiles_per_seq;
  int64_t work_items;  // tiles_per_seq * num_seqs * num_kv_heads
  float scale_log2;
  int64_t sink;
  const int32_t* local;
};

#ifdef LSERVE_SM90A_DEVICE

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

__device__ __forceinline__ WorkItem Resolve(const Sm90Args& a, int64_t w) {
  WorkItem item{};
  const int64_t per_rank = int64_t{a.t.num_seqs} * a.kv.num_kv_heads;
  const int tile_rank = static_cast<int>(w / per_rank);
  item.b = static_cast<int>((w % per_rank) / a.kv.num_kv_heads);
  item.kv_head = static_cast<int>(w % a.kv.num_kv_heads);
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

// The producer warpgroup: gathers the K and V tiles of every work item into the ring.
template <int kHeadDim>
__device__ void Produce(const Sm90Args& a, uint8_t* smem, uint64_t* full_k, uint64_t* full_v,
                        uint64_t* empty, const uint16_t** row_source) {
  constexpr int kChunks = kHeadDim / 8;
  const int tid = threadIdx.x;  // 0..127
  uint32_t iteration = 0;
  for (int64_t w = blockIdx.x; w < a.work_items; w += gridDim.x) {
    const WorkItem item = Resolve(a, w);
    if (!item.valid) continue;
    const KvPoolView& pool = item.streaming ? a.kv.streaming : a.kv.dense;
    const int slot = a.kv.kv_head_slot[item.kv_head];
    const int64_t value_offset = ValueOffset(pool, a.kv.page_size, kHeadDim);
    for (int32_t i = 0; i < item.runs.count(); ++i, ++iteration) {
      const int stage = iteration % kStages;
      const uint32_t round = iteration / kStages;
      // Each thread finds one key row's address; the double-buffered table is safe to
      // rewrite two tiles later, after everyone passed the barrier in between.
      const uint16_t** rows = row_source + (iteration & 1) * kKeys;
      const int64_t pos = int64_t{item.runs.tile(i)} * kKeys + tid;
      const uint16_t* src = nullptr;
      if (pos <= item.last_pos) {
        const KvLocation at = item.streaming ? StreamingLocation(a.t, a.kv.page_size, item.b, pos)
                                             : DenseLocation(a.t, a.kv.page_size, item.b, pos);
        src = KeyRow(pool, at, slot, a.kv.page_size, kHeadDim);
      }
      rows[tid] = src;
      sm90::NamedBarrier(1, 128);
      sm90::BarrierWait(&empty[stage], (round & 1) ^ 1);
      uint8_t* k_tile = smem + Layout<kHeadDim>::kQBytes + stage * Layout<kHeadDim>::kStageBytes;
      uint8_t* v_tile = k_tile + Layout<kHeadDim>::kTileBytes;
#pragma unroll 4
      for (int pass = 0; pass < kKeys * kChunks / 128; ++pass) {
        const int index = pass * 128 + tid;
        const int row = index / kChunks;
        const int chunk = index % kChunks;
        const uint16_t* key = rows[row];
        CpAsync16(k_tile + SwizzledOffset(kKeys, row, chunk), key ? key + chunk * 8 : a.q,
                  key ? 16 : 0);
      }
      sm90::BarrierArriveOnCpAsync(&full_k[stage]);
#pragma unroll 4
      for (int pass = 0; pass < kKeys * kChunks / 128; ++pass) {
        const int index = pass * 128 + tid;
        const int row = index / kChunks;
        const int chunk = index % kChunks;
        const uint16_t* key = rows[row];
        CpAsync16(v_tile + SwizzledOffset(kKeys, row, chunk),
                  key ? key + value_offset + chunk * 8 : a.q, key ? 16 : 0);
      }
      sm90::BarrierArriveOnCpAsync(&full_v[stage]);
    }
  }
  CpAsyncWait<0>();
}

// A consumer warpgroup: 64 query rows of every work item.
template <int kHeadDim>
__device__ void Consume(const Sm90Args& a, uint8_t* smem, uint64_t* full_k, uint64_t* full_v,
                        uint64_t* empty, int consumer) {
  constexpr int kChunks = kHeadDim / 8;
  constexpr int kOut = kHeadDim / 2;                   // accumulator registers of O
  const int tid = threadIdx.x - 128 * (consumer + 1);  // 0..127 within the warpgroup
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t4 = lane & 3;
  uint8_t* q_tile = smem;
  const uint32_t q_base = sm90::Smem(q_tile) + consumer * 64 * 128;
  uint32_t iteration = 0;
  for (int64_t w = blockIdx.x; w < a.work_items; w += gridDim.x) {
    const WorkItem item = Resolve(a, w);
    if (!item.valid) continue;
    const int64_t local = a.local[item.b];
    // This warpgroup's 64 Q rows: row r is head r / tokens_per_tile, token r % ... .
    for (int i = tid; i < 64 * kChunks; i += 128) {
      const int r = consumer * 64 + i / kChunks;
      const int chunk = i % kChunks;
      const int h = r / a.tokens_per_tile;
      const int token = r % a.tokens_per_tile;
      const bool valid = h < a.group && token < item.tokens;
      const uint16_t* src = valid ? a.q + (item.first_row + token) * a.q_row_stride +
                                        int64_t{item.kv_head * a.group + h} * kHeadDim + chunk * 8
                                  : a.q;
      CpAsync16(q_tile + SwizzledOffset(kRows, r, chunk), src, valid ? 16 : 0);
    }
    CpAsyncCommit();
    CpAsyncWait<0>();
    sm90::FenceProxyAsync();
    sm90::NamedBarrier(2 + consumer, 128);

    int64_t row_pos[2];
    bool row_valid[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = consumer * 64 + warp * 16 + g + 8 * half;
      const int h = r / a.tokens_per_tile;
      const int token = r % a.tokens_per_tile;
      row_valid[half] = h < a.group && token < item.tokens;
      row_pos[half] = item.first_pos + token;
    }
    float o[kOut];
#pragma unroll
    for (int i = 0; i < kOut; ++i) o[i] = 0.0f;
    float row_max[2] = {kNegInf, kNegInf};
    float row_sum[2] = {0.0f, 0.0f};

    for (int32_t i = 0; i < item.runs.count(); ++i, ++iteration) {
      const int stage = iteration % kStages;
      const uint32_t parity = (iteration / kStages) & 1;
      const uint32_t k_base =
          sm90::Smem(smem + Layout<kHeadDim>::kQBytes + stage * Layout<kHeadDim>::kStageBytes);
      const uint32_t v_base = k_base + Layout<kHeadDim>::kTileBytes;
      sm90::BarrierWait(&full_k[stage], parity);
      sm90::FenceProxyAsync();
      // S = Q K^T, 64 rows x 128 keys, 16 columns of the head dimension per step.
      float s[64];
      sm90::FenceRegisters(s);
      sm90::WgmmaFence();
#pragma unroll
      for (int ks = 0; ks < kHeadDim / 16; ++ks) {
        const uint32_t column = (ks & 3) * 32;  // 16 bf16 columns inside a 128-byte row
        const uint64_t qd =
            sm90::MatrixDescriptor(q_base + (ks >> 2) * kRows * 128 + column, 16, 1024);
        const uint64_t kd =
            sm90::MatrixDescriptor(k_base + (ks >> 2) * kBlockBytes + column, 16, 1024);
        sm90::WgmmaSS128(s, qd, kd, ks > 0);
      }
      sm90::WgmmaCommit();
      sm90::WgmmaWait<0>();
      sm90::FenceRegisters(s);

      // Scale (log2 units) and mask; s[4j + e] is row half e / 2, key 8j + 2t + e % 2.
      const int32_t key_tile = item.runs.tile(i);
      const bool masked = KeyTileNeedsMask(item.streaming, item.first_pos, item.last_pos, a.sink,
                                           local, kKeys, key_tile);
#pragma unroll
      for (int j = 0; j < 16; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int half = e >> 1;
          const int64_t key = int64_t{key_tile} * kKeys + j * 8 + 2 * t4 + (e & 1);
          const bool keep = !masked || (row_valid[half] && KeyVisible(item.streaming, row_pos[half],
                                                                      key, a.sink, local));
          s[4 * j + e] = keep ? s[4 * j + e] * a.scale_log2 : kNegInf;
        }
      }
      float correction[2];
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        float tile_max = kNegInf;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          tile_max = fmaxf(tile_max, fmaxf(s[4 * j + 2 * half], s[4 * j + 2 * half + 1]));
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xFFFFFFFFu, tile_max, 2));
        const float new_max = fmaxf(row_max[half], tile_max);
        const float base = new_max == kNegInf ? 0.0f : new_max;
        correction[half] = exp2f(row_max[half] - base);
        float sum = 0.0f;
#pragma unroll
        for (int j = 0; j < 16; ++j) {
          s[4 * j + 2 * half] = exp2f(s[4 * j + 2 * half] - base);
          s[4 * j + 2 * half + 1] = exp2f(s[4 * j + 2 * half + 1] - base);
          sum += s[4 * j + 2 * half] + s[4 * j + 2 * half + 1];
        }
        row_sum[half] = row_sum[half] * correction[half] + sum;
        row_max[half] = new_max;
      }
#pragma unroll
      for (int j = 0; j < kOut / 4; ++j) {
        o[4 * j] *= correction[0];
        o[4 * j + 1] *= correction[0];
        o[4 * j + 2] *= correction[1];
        o[4 * j + 3] *= correction[1];
      }
      // P as bf16 A fragments, 16 keys each.
      uint32_t p[8][4];
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
        p[kk][0] = PackBf16x2(s[8 * kk], s[8 * kk + 1]);
        p[kk][1] = PackBf16x2(s[8 * kk + 2], s[8 * kk + 3]);
        p[kk][2] = PackBf16x2(s[8 * kk + 4], s[8 * kk + 5]);
        p[kk][3] = PackBf16x2(s[8 * kk + 6], s[8 * kk + 7]);
      }
      sm90::BarrierWait(&full_v[stage], parity);
      sm90::FenceProxyAsync();
      sm90::FenceRegisters(o);
      sm90::WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < 8; ++kk) {
        const uint64_t vd = sm90::MatrixDescriptor(v_base + kk * 16 * 128, kBlockBytes, 1024);
        if constexpr (kHeadDim == 128) {
          sm90::WgmmaRS128(o, p[kk], vd);
        } else {
          sm90::WgmmaRS64(o, p[kk], vd);
        }
      }
      sm90::WgmmaCommit();
      sm90::WgmmaWait<0>();
      sm90::FenceRegisters(o);
      if (lane == 0) sm90::BarrierArrive(&empty[stage]);
    }
    // Normalize and write the rows this thread holds.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float sum = row_sum[half];
      sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 1);
      sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 2);
      const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
      if (!row_valid[half]) continue;
      const int r = consumer * 64 + warp * 16 + g + 8 * half;
      const int h = r / a.tokens_per_tile;
      const int token = r % a.tokens_per_tile;
      uint16_t* out = a.out + (item.first_row + token) * a.out_row_stride +
                      int64_t{item.kv_head * a.group + h} * kHeadDim + 2 * t4;
#pragma unroll
      for (int j = 0; j < kOut / 4; ++j) {
        *reinterpret_cast<uint32_t*>(out + j * 8) =
            PackBf16x2(o[4 * j + 2 * half] * inverse, o[4 * j + 2 * half + 1] * inverse);
      }
    }
    // Every warp is done with this item's Q before the next one overwrites it.
    sm90::NamedBarrier(2 + consumer, 128);
  }
}

#endif  // LSERVE_SM90A_DEVICE

template <int kHeadDim>
__global__ void __launch_bounds__(kThreads, 1) PrefillSm90Kernel(Sm90Args a) {
#ifdef LSERVE_SM90A_DEVICE
  extern __shared__ uint8_t raw_smem[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw_smem) + 1023) &
                                             ~static_cast<uintptr_t>(1023));
  uint64_t* barriers = reinterpret_cast<uint64_t*>(smem + Layout<kHeadDim>::kBarrierOffset);
  uint64_t* full_k = barriers;
  uint64_t* full_v = barriers + kStages;
  uint64_t* empty = barriers + 2 * kStages;
  const uint16_t** row_source =
      reinterpret_cast<const uint16_t**>(smem + Layout<kHeadDim>::kRowSourceOffset);
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) {
      sm90::BarrierInit(&full_k[s], 128);  // every producer thread's cp.async arrival
      sm90::BarrierInit(&full_v[s], 128);
      sm90::BarrierInit(&empty[s], 4 * kConsumers);  // one arrival per consumer warp
    }
    sm90::BarrierInitFence();
  }
  __syncthreads();
  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    sm90::RegistersDecrease<56>();
    Produce<kHeadDim>(a, smem, full_k, full_v, empty, row_source);
  } else {
    sm90::RegistersIncrease<224>();
    Consume<kHeadDim>(a, smem, full_k, full_v, empty, warpgroup - 1);
  }
#else
  __trap();  // built for sm_90a only; the launcher checks the device first
#endif
}

template <int kHeadDim>
absl::Status Launch(const Sm90Args& args, int num_sms, cudaStream_t stream) {
  static const cudaError_t configured =
      cudaFuncSetAttribute(PrefillSm90Kernel<kHeadDim>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           Layout<kHeadDim>::kAllocation);
  if (configured != cudaSuccess) {
    return CudaStatus(configured, "configuring PrefillSm90Kernel");
  }
  const int64_t ctas = args.work_items < num_sms ? args.work_items : num_sms;
  PrefillSm90Kernel<kHeadDim>
      <<<static_cast<int>(ctas > 0 ? ctas : 1), kThreads, Layout<kHeadDim>::kAllocation, stream>>>(
          args);
  return CheckLaunch("PrefillSm90Kernel");
}

}  // namespace

bool PrefillSm90Supported(int device) {
  int major = 0;
  int minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major == 9 && minor == 0;
}

absl::Status PagedPrefillAttentionSm90(const PagedAttentionParams& p, int num_sms, void* stream) {
  Sm90Args args{};
  args.kv = p.kv;
  args.t = p.tables;
  args.q_indptr = p.q_indptr;
  args.q = static_cast<const uint16_t*>(p.q);
  args.out = static_cast<uint16_t*>(p.out);
  args.q_row_stride = p.q_row_stride;
  args.out_row_stride = p.out_row_stride;
  args.group = p.num_q_heads / p.kv.num_kv_heads;
  args.tokens_per_tile = kRows / args.group;
  args.tiles_per_seq = (p.tables.max_queries + args.tokens_per_tile - 1) / args.tokens_per_tile;
  args.work_items = int64_t{p.tables.num_seqs} * args.tiles_per_seq * p.kv.num_kv_heads;
  args.scale_log2 = p.scale * kLog2e;
  args.sink = p.sink;
  args.local = p.local;
  cudaStream_t s = AsStream(stream);
  return p.kv.head_dim == 128 ? Launch<128>(args, num_sms, s) : Launch<64>(args, num_sms, s);
}

}  // namespace lserve::cuda::internal
