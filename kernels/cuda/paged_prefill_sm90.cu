// Block-sparse causal prefill attention over paged bf16 KV for Hopper (sm_90a), in the
// style of FlashAttention-3: warpgroup MMA (wgmma) from shared memory, warp
// specialization and an mbarrier pipeline. A CTA has three warpgroups: a producer that
// fills a two-stage ring with K/V tiles of 128 keys, and two consumers of 64 query rows
// each. The producer's first warp looks up each tile's pages a tile ahead and one lane
// issues a tensor copy (TMA) per page and 64-column block, swizzled as wgmma reads it
// (paged_prefill_sm90_copies.cuh); a V tile that runs past the sequence's last key comes
// by cp.async from all four warps instead, zero-filling the rows past the end. A
// consumer computes S = Q K^T with Q and K read from shared memory, runs the online
// softmax on the accumulators while P V of the previous tile runs, and computes O += P V
// with P straight from registers and V read MN-major, so nothing is transposed.
// Registers move from the producer to the consumers (setmaxnreg). As in the mma.sync
// kernel (paged_prefill.cu), a 128-row query tile is the GQA group's heads times 128 /
// group tokens, the key tiles come from PlanKeyTiles and tiles that KeyTileNeedsMask
// marks get a token-exact mask. Persistent CTAs take work items from a global counter:
// dense heads' first, longest query tiles first (see Resolve).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/paged_prefill_sm90.cuh"
#include "kernels/cuda/paged_prefill_sm90.h"
#include "kernels/cuda/paged_prefill_sm90_copies.cuh"
#include "kernels/cuda/pool_tensor_map.h"
#include "kernels/cuda/prefill_plan.h"
#include "kernels/cuda/wgmma_sm90.cuh"

namespace lserve::cuda::internal {
namespace prefill_sm90 {

#ifdef LSERVE_SM90A_DEVICE

// The producer's side of the work hand-over: its first thread takes the next item from
// the global counter (longest query tiles first) into the round's slot once the
// consumers have read the slot's last round.
__device__ __forceinline__ int64_t FetchWork(PipelineSync* sync, uint32_t round,
                                             int32_t* counters) {
  if (threadIdx.x == 0) {
    if (round > 0) sm90::BarrierWait(&sync->work_empty, (round - 1) & 1);
    sync->work[round & 1] = atomicAdd(reinterpret_cast<unsigned long long*>(counters), 1ull);
    sm90::BarrierArrive(&sync->work_full);
  }
  sm90::NamedBarrier(kProducerBarrier, 128);
  return sync->work[round & 1];
}

// The consumers' side.
__device__ __forceinline__ int64_t ReceiveWork(PipelineSync* sync, uint32_t round) {
  sm90::BarrierWait(&sync->work_full, round & 1);
  const int64_t w = sync->work[round & 1];
  __syncwarp();
  if ((threadIdx.x & 31) == 0) sm90::BarrierArrive(&sync->work_empty);
  return w;
}

// The producer warpgroup: gathers the K and V tiles of every work item into the ring.
// With tensor copies one lane of warp 0 issues them; the other warps join only for the
// cp.async tiles.
template <int kHeadDim>
__device__ void Produce(const Sm90Args& a, const PoolMaps& maps, uint8_t* smem, PipelineSync* sync,
                        const int* order, const uint16_t** row_source) {
  const int tid = threadIdx.x;  // 0..127
  const bool copier = tid < 32;
  uint32_t iteration = 0;
  for (uint32_t k = 0;; ++k) {
    const int64_t w = FetchWork(sync, k, a.counters);
    if (w >= a.work_items) break;
    const WorkItem item = Resolve(a, sync, order, w);
    if (!item.valid) continue;
    const KvPoolView& pool = item.streaming ? a.kv.streaming : a.kv.dense;
    const void* map = item.streaming ? &maps.streaming : &maps.dense;
    const int slot = a.kv.kv_head_slot[item.kv_head];
    const int64_t value_offset = ValueOffset(pool, a.kv.page_size, kHeadDim);
    const int key_row = slot * a.kv.page_size;
    const int value_row = (pool.num_heads + slot) * a.kv.page_size;
    // The copier warp looks up the next tile's pages while this one's copies wait.
    const bool tensor_copier = copier && a.tensor_copies;
    const PageLookup lookup = tensor_copier ? PageLookup(a, item) : PageLookup{};
    int32_t next_page =
        tensor_copier ? LanePage(lookup, item, a.kv.page_size, item.runs.tile(0)) : -1;
    for (int32_t i = 0; i < item.runs.count(); ++i, ++iteration) {
      const int stage = iteration % kStages;
      const uint32_t round = iteration / kStages;
      const int32_t tile = item.runs.tile(i);
      uint8_t* k_tile = smem + Layout<kHeadDim>::kQBytes + stage * Layout<kHeadDim>::kStageBytes;
      uint8_t* v_tile = k_tile + Layout<kHeadDim>::kTileBytes;
      const bool rows_k = !a.tensor_copies;
      const bool rows_v = rows_k || TilePassesEnd(item, tile);
      if (tensor_copier) {
        const int32_t lane_page = next_page;
        if (i + 1 < item.runs.count()) {
          next_page = LanePage(lookup, item, a.kv.page_size, item.runs.tile(i + 1));
        }
        sm90::BarrierWait(&sync->empty_k[stage], (round & 1) ^ 1);
        CopyTilePages<kHeadDim>(a, item, map, key_row, tile, lane_page, k_tile,
                                &sync->full_k[stage]);
        if (!rows_v) {
          sm90::BarrierWait(&sync->empty_v[stage], (round & 1) ^ 1);
          CopyTilePages<kHeadDim>(a, item, map, value_row, tile, lane_page, v_tile,
                                  &sync->full_v[stage]);
        }
      }
      if (!rows_v) continue;
      // Each thread finds one key row's address; the double-buffered table is safe to
      // rewrite two tiles later, after everyone passed the barrier in between.
      const uint16_t** rows = row_source + (iteration & 1) * kKeys;
      const int64_t pos = int64_t{tile} * kKeys + tid;
      const uint16_t* src = nullptr;
      if (pos <= item.last_pos) {
        const KvLocation at = item.streaming ? StreamingLocation(a.t, a.kv.page_size, item.b, pos)
                                             : DenseLocation(a.t, a.kv.page_size, item.b, pos);
        src = KeyRow(pool, at, slot, a.kv.page_size, kHeadDim);
      }
      rows[tid] = src;
      sm90::NamedBarrier(kProducerBarrier, 128);
      if (rows_k) {
        sm90::BarrierWait(&sync->empty_k[stage], (round & 1) ^ 1);
        CopyTileRows<kHeadDim>(k_tile, rows, 0, a.q, &sync->full_k[stage]);
      }
      sm90::BarrierWait(&sync->empty_v[stage], (round & 1) ^ 1);
      CopyTileRows<kHeadDim>(v_tile, rows, value_offset, a.q,
                             rows_k ? &sync->full_v[stage] : &sync->full_v_rows[stage]);
    }
  }
  CpAsyncWait<0>();
}

// A consumer warpgroup: 64 query rows of every work item. The scores of tile i are
// computed while P V of tile i - 1 runs, and the softmax of tile i overlaps that GEMM.
template <int kHeadDim>
__device__ void Consume(const Sm90Args& a, uint8_t* smem, PipelineSync* sync, const int* order,
                        int consumer) {
  constexpr int kChunks = kHeadDim / 8;
  constexpr int kOut = kHeadDim / 2;                   // accumulator registers of O
  const int tid = threadIdx.x - 128 * (consumer + 1);  // 0..127 within the warpgroup
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;
  const int t4 = lane & 3;
  uint8_t* q_tile = smem;
  const uint32_t q_base = sm90::Smem(q_tile) + consumer * 64 * 128;
  const uint32_t ring = sm90::Smem(smem + Layout<kHeadDim>::kQBytes);
  auto k_base = [&](uint32_t it) { return ring + (it % kStages) * Layout<kHeadDim>::kStageBytes; };
  uint32_t iteration = 0;
  // Phase parities, one bit per stage, of the two kinds of V barrier (with tensor copies
  // they alternate irregularly, so the round number does not give them).
  uint32_t v_phases = 0;
  uint32_t v_rows_phases = 0;
  for (uint32_t round = 0;; ++round) {
    const int64_t w = ReceiveWork(sync, round);
    if (w >= a.work_items) break;
    const WorkItem item = Resolve(a, sync, order, w);
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
    sm90::NamedBarrier(kConsumerBarrier + consumer, 128);

    RowState rows;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int r = consumer * 64 + warp * 16 + g + 8 * half;
      const int h = r / a.tokens_per_tile;
      const int token = r % a.tokens_per_tile;
      rows.valid[half] = h < a.group && token < item.tokens;
      rows.pos[half] = item.first_pos + token;
      rows.max[half] = kNegInf;
      rows.sum[half] = 0.0f;
    }
    float o[kOut];
#pragma unroll
    for (int i = 0; i < kOut; ++i) o[i] = 0.0f;
    float s[64];
    uint32_t p[8][4];
    float correction[2];
    const int32_t count = item.runs.count();
    // Tile 0: scores, softmax, P.
    // Tiles that came by cp.async (generic proxy) are fenced before wgmma reads them.
    const bool rows_k = !a.tensor_copies;
    auto rows_v = [&](int32_t i) { return rows_k || TilePassesEnd(item, item.runs.tile(i)); };
    // Waits for V of the i-th tile (ring iteration `it`); fences it when it came by cp.async.
    auto wait_v = [&](int32_t i, uint32_t it) {
      const int stage = it % kStages;
      const bool by_rows = rows_v(i);
      if (by_rows && !rows_k) {
        sm90::BarrierWait(&sync->full_v_rows[stage], (v_rows_phases >> stage) & 1);
        v_rows_phases ^= 1u << stage;
      } else {
        sm90::BarrierWait(&sync->full_v[stage], (v_phases >> stage) & 1);
        v_phases ^= 1u << stage;
      }
      if (by_rows) sm90::FenceProxyAsync();
    };
    sm90::BarrierWait(&sync->full_k[iteration % kStages], (iteration / kStages) & 1);
    if (rows_k) sm90::FenceProxyAsync();
    sm90::FenceRegisters(s);
    sm90::WgmmaFence();
    IssueScores<kHeadDim>(q_base, k_base(iteration), s);
    sm90::WgmmaCommit();
    sm90::WgmmaWait<0>();
    sm90::FenceRegisters(s);
    if (lane == 0) sm90::BarrierArrive(&sync->empty_k[iteration % kStages]);
    SoftmaxTile(a, item, local, item.runs.tile(0), t4, rows, s, correction);
    PackP(s, p);
    for (int32_t i = 1; i < count; ++i) {
      const uint32_t current = iteration + i;
      const uint32_t previous = current - 1;
      sm90::BarrierWait(&sync->full_k[current % kStages], (current / kStages) & 1);
      if (rows_k) sm90::FenceProxyAsync();
      sm90::FenceRegisters(s);
      sm90::WgmmaFence();
      IssueScores<kHeadDim>(q_base, k_base(current), s);
      sm90::WgmmaCommit();
      // While the scores run: rescale O for tile i - 1's max, then queue P V after them.
      Rescale(correction, o);
      wait_v(i - 1, previous);
      sm90::FenceRegisters(o);
      sm90::WgmmaFence();
      IssuePv<kHeadDim>(k_base(previous) + Layout<kHeadDim>::kTileBytes, p, o);
      sm90::WgmmaCommit();
      sm90::WgmmaWait<1>();  // the scores are in; P V still runs
      sm90::FenceRegisters(s);
      if (lane == 0) sm90::BarrierArrive(&sync->empty_k[current % kStages]);
      SoftmaxTile(a, item, local, item.runs.tile(i), t4, rows, s, correction);
      sm90::WgmmaWait<0>();
      sm90::FenceRegisters(o);
      KeepLive(p);
      if (lane == 0) sm90::BarrierArrive(&sync->empty_v[previous % kStages]);
      PackP(s, p);
    }
    const uint32_t last = iteration + count - 1;
    Rescale(correction, o);
    wait_v(count - 1, last);
    sm90::FenceRegisters(o);
    sm90::WgmmaFence();
    IssuePv<kHeadDim>(k_base(last) + Layout<kHeadDim>::kTileBytes, p, o);
    sm90::WgmmaCommit();
    sm90::WgmmaWait<0>();
    sm90::FenceRegisters(o);
    KeepLive(p);
    if (lane == 0) sm90::BarrierArrive(&sync->empty_v[last % kStages]);
    iteration += count;

    // Normalize and write the rows this thread holds.
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float sum = rows.sum[half];
      sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 1);
      sum += __shfl_xor_sync(0xFFFFFFFFu, sum, 2);
      const float inverse = sum > 0.0f ? 1.0f / sum : 0.0f;
      if (!rows.valid[half]) continue;
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
    sm90::NamedBarrier(kConsumerBarrier + consumer, 128);
  }
}

#endif  // LSERVE_SM90A_DEVICE

template <int kHeadDim>
__global__ void __launch_bounds__(kThreads, 1)
    PrefillSm90Kernel(Sm90Args a, const __grid_constant__ PoolMaps maps) {
#ifdef LSERVE_SM90A_DEVICE
  extern __shared__ uint8_t raw_smem[];
  uint8_t* smem = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw_smem) + 1023) &
                                             ~static_cast<uintptr_t>(1023));
  PipelineSync* sync = reinterpret_cast<PipelineSync*>(smem + Layout<kHeadDim>::kSyncOffset);
  const uint16_t** row_source =
      reinterpret_cast<const uint16_t**>(smem + Layout<kHeadDim>::kRowSourceOffset);
  int* order = reinterpret_cast<int*>(smem + Layout<kHeadDim>::kHeadOrderOffset);
  if (threadIdx.x == 0) {
    OrderHeads(a, sync, order);
    for (int s = 0; s < kStages; ++s) {
      // One arrival with the tensor copies' bytes, or every producer thread's cp.async.
      const int full_count = a.tensor_copies ? 1 : 128;
      sm90::BarrierInit(&sync->full_k[s], full_count);
      sm90::BarrierInit(&sync->full_v[s], full_count);
      sm90::BarrierInit(&sync->full_v_rows[s], 128);
      sm90::BarrierInit(&sync->empty_k[s], 4 * kConsumers);  // one arrival per consumer warp
      sm90::BarrierInit(&sync->empty_v[s], 4 * kConsumers);
    }
    sm90::BarrierInit(&sync->work_full, 1);
    sm90::BarrierInit(&sync->work_empty, 4 * kConsumers);  // one arrival per consumer warp
    sm90::BarrierInitFence();
  }
  __syncthreads();
  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    sm90::RegistersDecrease<56>();
    Produce<kHeadDim>(a, maps, smem, sync, order, row_source);
    // The last CTA to finish returns the counters to zero for the next launch.
    if (threadIdx.x == 0) {
      __threadfence();
      if (atomicAdd(a.counters + 2, 1) == static_cast<int>(gridDim.x) - 1) {
        *reinterpret_cast<unsigned long long*>(a.counters) = 0ull;
        a.counters[2] = 0;
      }
    }
  } else {
    sm90::RegistersIncrease<224>();
    Consume<kHeadDim>(a, smem, sync, order, warpgroup - 1);
  }
#else
  __trap();  // built for sm_90a only; the launcher checks the device first
#endif
}

// Tensor maps for both pools when the page geometry allows them (page sizes that divide
// a tile into at most kMostPagesPerTile pages, so each box starts on a swizzle period) and
// LSERVE_PREFILL_TMA is not 0; otherwise args.tensor_copies stays 0.
absl::Status MapPools(const PagedKvLayer& kv, Sm90Args* args, PoolMaps* maps) {
  static const bool disabled = [] {
    const char* value = std::getenv("LSERVE_PREFILL_TMA");
    return value != nullptr && std::string_view(value) == "0";
  }();
  args->tensor_copies = 0;
  if (disabled || kKeys % kv.page_size != 0 || kKeys / kv.page_size > kMostPagesPerTile) {
    return absl::OkStatus();
  }
  for (auto [pool, map] : {std::pair{&kv.dense, &maps->dense}, {&kv.streaming, &maps->streaming}}) {
    // A layer without heads of a kind has no pages of it (stride 0) and never reads them.
    if (pool->base == nullptr || pool->num_heads == 0 || pool->page_stride == 0) continue;
    ASSIGN_OR_RETURN(*map, EncodePoolTensorMap(*pool, kv.head_dim, kv.page_size));
  }
  args->tensor_copies = 1;
  return absl::OkStatus();
}

template <int kHeadDim>
absl::Status Launch(const Sm90Args& args, const PoolMaps& maps, int num_sms, cudaStream_t stream) {
  static const cudaError_t configured =
      cudaFuncSetAttribute(PrefillSm90Kernel<kHeadDim>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           Layout<kHeadDim>::kAllocation);
  if (configured != cudaSuccess) {
    return CudaStatus(configured, "configuring PrefillSm90Kernel");
  }
  const int64_t ctas = args.work_items < num_sms ? args.work_items : num_sms;
  PrefillSm90Kernel<kHeadDim>
      <<<static_cast<int>(ctas > 0 ? ctas : 1), kThreads, Layout<kHeadDim>::kAllocation, stream>>>(
          args, maps);
  return CheckLaunch("PrefillSm90Kernel");
}

}  // namespace prefill_sm90

bool PrefillSm90Supported(int device) { return IsSm90Device(device); }

absl::Status PagedPrefillAttentionSm90(const PagedAttentionParams& p, void* workspace, int num_sms,
                                       void* stream) {
  prefill_sm90::Sm90Args args{};
  static_cast<PrefillArgs&>(args) = MakePrefillArgs(p, kSm90TileRows, workspace);
  prefill_sm90::PoolMaps maps{};
  RETURN_IF_ERROR(prefill_sm90::MapPools(p.kv, &args, &maps));
  cudaStream_t s = AsStream(stream);
  return p.kv.head_dim == 128 ? prefill_sm90::Launch<128>(args, maps, num_sms, s)
                              : prefill_sm90::Launch<64>(args, maps, num_sms, s);
}

}  // namespace lserve::cuda::internal
