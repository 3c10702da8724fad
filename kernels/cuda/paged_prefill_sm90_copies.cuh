// Internal to kernels/cuda: how the Hopper prefill kernel's producer (paged_prefill_sm90.cu)
// fills a K or V ring slot: by tensor copies, one per page and 64-column block issued by
// one lane, or by 16-byte cp.async per row from all producer threads where rows past the
// sequence's end must read as zeros.
#ifndef LSERVE_KERNELS_CUDA_PAGED_PREFILL_SM90_COPIES_CUH_
#define LSERVE_KERNELS_CUDA_PAGED_PREFILL_SM90_COPIES_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/paged_prefill_sm90.cuh"
#include "kernels/cuda/wgmma_sm90.cuh"

namespace lserve::cuda::internal::prefill_sm90 {

#ifdef LSERVE_SM90A_DEVICE

// Whether key tile `tile` runs past the item's last key: its V then comes by cp.async,
// which zero-fills the rows past the end (stale rows could hold anything, and P V would
// carry a NaN from them even at probability 0). K rows past the end are masked instead.
__device__ __forceinline__ bool TilePassesEnd(const WorkItem& item, int32_t tile) {
  return int64_t{tile} * kKeys + kKeys - 1 > item.last_pos;
}

// All producer threads: copies one K or V tile (the 128 rows whose addresses `rows` holds,
// `offset` elements further; null rows are zero-filled) into a swizzled ring slot; `full`
// (expecting the 128 threads' arrivals) completes once the copies land.
template <int kHeadDim>
__device__ __forceinline__ void CopyTileRows(uint8_t* tile, const uint16_t* const* rows,
                                             int64_t offset, const uint16_t* any, uint64_t* full) {
  constexpr int kChunks = kHeadDim / 8;
#pragma unroll 4
  for (int pass = 0; pass < kKeys * kChunks / 128; ++pass) {
    const int index = pass * 128 + threadIdx.x;
    const int row = index / kChunks;
    const int chunk = index % kChunks;
    const uint16_t* src = rows[row];
    CpAsync16(tile + SwizzledOffset(kKeys, row, chunk), src ? src + offset + chunk * 8 : any,
              src ? 16 : 0);
  }
  sm90::BarrierArriveOnCpAsync(full);
}

// A sequence's page lookups for one KV head kind (DenseLocation and StreamingLocation at
// page-aligned positions), with the per-sequence table reads done once per work item.
struct PageLookup {
  const int32_t* indices;
  int32_t sink_pages;
  int32_t ring_slots;
  int64_t ring_start;
  bool streaming;

  PageLookup() = default;
  __device__ __forceinline__ PageLookup(const Sm90Args& a, const WorkItem& item) {
    streaming = item.streaming;
    ring_start = a.t.ring_start;
    if (!streaming) {
      indices = a.t.dense_indices + a.t.dense_indptr[item.b];
      sink_pages = ring_slots = 0;
      return;
    }
    const int32_t first = a.t.stream_indptr[item.b];
    indices = a.t.stream_indices + first;
    sink_pages = a.t.stream_sink_pages[item.b];
    ring_slots = a.t.stream_indptr[item.b + 1] - first - sink_pages;
  }
  __device__ __forceinline__ int32_t Page(int64_t pos, int page_size) const {
    if (!streaming || pos < ring_start) return indices[pos / page_size];
    return indices[sink_pages + ((pos - ring_start) / page_size) % ring_slots];
  }
};

// Lane j of the copier warp: the physical page of key tile `tile`'s j-th page, if it
// holds keys up to the item's last (-1 otherwise).
__device__ __forceinline__ int32_t LanePage(const PageLookup& lookup, const WorkItem& item,
                                            int page_size, int32_t tile) {
  const int lane = threadIdx.x & 31;
  const int64_t pos = int64_t{tile} * kKeys + int64_t{lane} * page_size;
  return lane < kKeys / page_size && pos <= item.last_pos ? lookup.Page(pos, page_size) : -1;
}

// The copier warp: copies the pages of key tile `tile` that hold keys up to the item's
// last into a ring slot, one tensor copy per page and 64-column block issued by lane 0;
// `lane_page` is LanePage's answer and `row` the head's first K or V row in a page.
template <int kHeadDim>
__device__ __forceinline__ void CopyTilePages(const Sm90Args& a, const WorkItem& item,
                                              const void* map, int row, int32_t tile,
                                              int32_t lane_page, uint8_t* dst, uint64_t* full) {
  const int page_size = a.kv.page_size;
  const int64_t keys = item.last_pos - int64_t{tile} * kKeys + 1;
  const int pages =
      keys >= kKeys ? kKeys / page_size : static_cast<int>((keys + page_size - 1) / page_size);
  int32_t page[kMostPagesPerTile];
#pragma unroll
  for (int p = 0; p < kMostPagesPerTile; ++p) page[p] = __shfl_sync(0xFFFFFFFFu, lane_page, p);
  if ((threadIdx.x & 31) == 0) {
    sm90::BarrierArriveExpectTx(full, pages * page_size * kHeadDim * 2);
    const uint32_t base = sm90::Smem(dst);
#pragma unroll
    for (int p = 0; p < kMostPagesPerTile; ++p) {
      if (p >= pages) break;
#pragma unroll
      for (int block = 0; block < kHeadDim / 64; ++block) {
        sm90::TensorCopy3d(base + block * kBlockBytes + p * page_size * 128, map, block * 64, row,
                           page[p], full);
      }
    }
  }
  __syncwarp();
}

#endif  // LSERVE_SM90A_DEVICE

}  // namespace lserve::cuda::internal::prefill_sm90

#endif  // LSERVE_KERNELS_CUDA_PAGED_PREFILL_SM90_COPIES_CUH_
