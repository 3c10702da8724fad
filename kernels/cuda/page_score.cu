// Page scoring of the CUDA backend's decode path: the bound S of every logical page
// holding tokens against the query, max-reduced to physical pages (DESIGN.md §3).
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/chained_launch.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/page_score.cuh"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/paged_kv.cuh"
#include "kernels/cuda/wgmma_sm90.cuh"

namespace lserve::cuda {
namespace {

using internal::AddPageBounds;
using internal::Bf16ToFloat;
using internal::CheckLaunch;
using internal::CpAsyncCommit;
using internal::CpAsyncWait;
using internal::FindBlockGroup;
using internal::kScoreHeadsPerPass;
using internal::ScoreGroup;

constexpr int kScoreThreads = 128;
// Two threads per logical page, each summing four of the eight interleaved partial sums.
constexpr int kScoreLanesPerPage = 2;
// Logical pages of one tile (rounded down to whole physical pages).
constexpr int kScoreTilePages = kScoreThreads / kScoreLanesPerPage;
// Tiles of statistics in shared memory: with two, one is scored while the next one is
// copied in; with one, a block holds a single tile (more blocks fit an SM), for grids where
// every block scores one tile.
constexpr int kScoreMaxStages = 2;
// Each staged segment (a physical page's rows) is followed by 16 bytes, so the 8-byte reads
// of the eight pages a half-warp scores fall in distinct banks.
constexpr int kScoreRowPad = 8;

// Shared memory of the staged tiles: for each stage, kmax then kmin segments of
// kScoreTilePages / logical_per_page physical pages, each padded (as the kernel lays them
// out). The most is taken at one logical page per page (a pad per row).
constexpr int StagedBytes(int head_dim, int logical_per_page, int stages) {
  return stages * 2 * (kScoreTilePages / logical_per_page) *
         (logical_per_page * head_dim + kScoreRowPad) * 2;
}

struct ScoreArgs {
  PagedKvLayer kv;
  PageTableView t;
  const uint16_t* q;
  int64_t q_row_stride;
  const PageScoreJob* jobs;
  float* scores;
  int num_jobs;
  int64_t resident_blocks;  // blocks the device runs at once
  int stages;               // 1 or kScoreMaxStages tiles in shared memory
  bool early_loads;         // ScorePagesParams::after_append
};

// Each block scores tiles of its group's physical pages (the group's blocks, gridDim.x per
// job, take the tiles in turn). A tile's kmax and kmin rows are copied into shared memory
// (cp.async) while the block scores the previous tile from there, two threads per logical
// page. A job's page score is the max over its heads and the page's logical pages (exact
// in any order).
//
// Shared layout of a tile: kmax segments, then kmin segments, one per physical page: its
// logical pages' rows for this KV head, contiguous as in the pool, then kScoreRowPad
// elements. Thread pair q scores logical page q / pages_per_tile of segment
// q % pages_per_tile, so the eight pairs of a half-warp read eight segments, whose pads put
// them in distinct banks.
template <int kHeadDim>
__global__ void __launch_bounds__(kScoreThreads, 2) ScoreKernel(ScoreArgs a) {
  // Without early loads, wait for the previous kernel before reading anything.
  if (!a.early_loads) ChainWait();
  extern __shared__ __align__(16) uint16_t staged[];
  __shared__ __align__(16) float q_pos[kScoreHeadsPerPass][kHeadDim];
  __shared__ __align__(16) float q_neg[kScoreHeadsPerPass][kHeadDim];
  // Logical pages' bounds, two buffers (by tile parity): a warp may score the next tile while
  // others still read this one's.
  __shared__ float best_shared[2][kScoreHeadsPerPass][kScoreTilePages];
  __shared__ ScoreGroup group;
#ifdef LSERVE_SM90A_DEVICE
  __shared__ __align__(8) uint64_t landed[kScoreMaxStages];  // a stage's copies are done
  if (threadIdx.x == 0) {
    for (int stage = 0; stage < kScoreMaxStages; ++stage)
      internal::sm90::BarrierInit(&landed[stage], 1);
    internal::sm90::BarrierInitFence();
  }
#endif
  FindBlockGroup(a.jobs, a.num_jobs, &group);  // its barriers publish the initialized ones
  const PageScoreJob lead = a.jobs[group.first];
  const int page_size = a.kv.page_size;
  const int logical_per_page = page_size / a.kv.logical_page_size;
  const int pages_per_tile = kScoreTilePages / logical_per_page;
  const int64_t len = a.t.kv_len[lead.seq];
  const int64_t num_logical = (len + a.kv.logical_page_size - 1) / a.kv.logical_page_size;
  const int64_t num_pages = (len + page_size - 1) / page_size;
  const int64_t num_tiles = (num_pages + pages_per_tile - 1) / pages_per_tile;
  const int32_t* table = a.t.dense_indices + a.t.dense_indptr[lead.seq];
  const int slot = a.kv.kv_head_slot[lead.kv_head];
  const uint16_t* row = a.q + int64_t{lead.q_row} * a.q_row_stride;
  const uint16_t* pool = static_cast<const uint16_t*>(a.kv.dense.base);
  // Where this head's kmax rows start in a physical page, and how far its kmin rows are.
  const int64_t kmax_in_page =
      internal::KmaxRow(a.kv.dense, 0, slot, 0, page_size, logical_per_page, kHeadDim) - pool;
  const int64_t kmin_offset = internal::KminOffset(a.kv.dense, logical_per_page, kHeadDim);
  const int segment_elems = logical_per_page * kHeadDim + kScoreRowPad;
  const int stage_elems = 2 * pages_per_tile * segment_elems;
  const int kmin_staged = pages_per_tile * segment_elems;
  // Byte address of the staged tiles in shared memory, for the copies.
  const uint32_t staged_address = internal::SmemAddress(staged);
  // Physical pages of a tile (the last one may be short).
  auto pages_in = [&](int64_t tile) {
    return static_cast<int>(min(int64_t{pages_per_tile}, num_pages - tile * pages_per_tile));
  };
#ifdef LSERVE_SM90A_DEVICE
  // Hopper: warp 0 copies each segment with one bulk copy, completing on the stage's
  // barrier. Its lanes read the page table entries of the tile after next while the copies
  // of the next one are issued, so their latency is spent during a tile's scoring.
  const int lane = threadIdx.x % 32;
  const int segment_bytes = 2 * logical_per_page * kHeadDim;
  int32_t next_physical[kScoreTilePages / 32];
  auto read_table = [&](int64_t tile) {
    const int64_t first_page = tile * pages_per_tile;
    const int pages_here = pages_in(tile);
#pragma unroll
    for (int i = 0; i < kScoreTilePages / 32; ++i) {
      const int page = lane + 32 * i;
      next_physical[i] = page < pages_here ? table[first_page + page] : 0;
    }
  };
  auto load_tile = [&](int64_t tile, int stage, int64_t next_tile) {
    if (threadIdx.x >= 32) return;
    int32_t physical[kScoreTilePages / 32];
#pragma unroll
    for (int i = 0; i < kScoreTilePages / 32; ++i) physical[i] = next_physical[i];
    if (next_tile < num_tiles) read_table(next_tile);
    const int pages_here = pages_in(tile);
    if (lane == 0) {
      internal::sm90::BarrierArriveExpectTx(&landed[stage], 2 * pages_here * segment_bytes);
    }
    __syncwarp();
    const uint32_t stage_address = staged_address + 2 * stage * stage_elems;
#pragma unroll
    for (int i = 0; i < kScoreTilePages / 32; ++i) {
      const int page = lane + 32 * i;
      if (page >= pages_here) break;
      const uint16_t* src = pool + int64_t{physical[i]} * a.kv.dense.page_stride + kmax_in_page;
      const uint32_t dst = stage_address + 2 * page * segment_elems;
      internal::sm90::BulkCopyToShared(dst, src, segment_bytes, &landed[stage]);
      internal::sm90::BulkCopyToShared(dst + 2 * kmin_staged, src + kmin_offset, segment_bytes,
                                       &landed[stage]);
    }
  };
#else
  // Copy roles: a segment of at most kScoreThreads 16-byte chunks (a power of two) is
  // copied by that many threads, each taking one chunk of every (kScoreThreads /
  // segment_chunks)-th segment; a longer one, or one whose chunks do not divide the block,
  // by all threads, each taking every kScoreThreads-th chunk of every segment.
  const int segment_chunks = logical_per_page * (kHeadDim / 8);
  const int copy_threads = kScoreThreads % segment_chunks == 0 ? segment_chunks : kScoreThreads;
  const int copy_chunk = threadIdx.x % copy_threads;
  const int copy_first_page = threadIdx.x / copy_threads;
  const int copy_page_step = kScoreThreads / copy_threads;
  // Pages whose table entries a thread reads together before copying their rows.
  constexpr int kScoreCopyBatch = 8;
  auto load_tile = [&](int64_t tile, int stage, int64_t /*next_tile*/) {
    const int pages_here = pages_in(tile);
    const int32_t* tile_table = table + tile * pages_per_tile;
    const uint32_t stage_address = staged_address + 2 * stage * stage_elems;
    // The page table entries of a batch are read before any copy, so their latencies overlap.
    for (int batch = copy_first_page; batch < pages_here;
         batch += kScoreCopyBatch * copy_page_step) {
      int32_t physical[kScoreCopyBatch];
#pragma unroll
      for (int b = 0; b < kScoreCopyBatch; ++b) {
        const int page = batch + b * copy_page_step;
        physical[b] = page < pages_here ? tile_table[page] : 0;
      }
#pragma unroll
      for (int b = 0; b < kScoreCopyBatch; ++b) {
        const int page = batch + b * copy_page_step;
        if (page >= pages_here) break;
        const uint16_t* src = pool + int64_t{physical[b]} * a.kv.dense.page_stride + kmax_in_page;
        const uint32_t dst = stage_address + 2 * page * segment_elems;
        for (int chunk = copy_chunk; chunk < segment_chunks; chunk += copy_threads) {
          internal::CpAsync16(dst + 16 * chunk, src + 8 * chunk);
          internal::CpAsync16(dst + 2 * kmin_staged + 16 * chunk, src + kmin_offset + 8 * chunk);
        }
      }
    }
    CpAsyncCommit();
  };
#endif
  auto load_q = [&](int pass, int heads) {
    for (int i = threadIdx.x; i < heads * kHeadDim; i += blockDim.x) {
      const int h = i / kHeadDim;
      const int c = i % kHeadDim;
      const float q = Bf16ToFloat(row[int64_t{group.head_index[pass + h]} * kHeadDim + c]);
      q_pos[h][c] = fmaxf(q, 0.0f);
      q_neg[h][c] = fminf(q, 0.0f);
    }
  };
  const bool one_pass = group.heads <= kScoreHeadsPerPass;
  const int half = threadIdx.x % kScoreLanesPerPage;  // which four partial sums
  const int pair = threadIdx.x / kScoreLanesPerPage;
  const int pair_segment = pair % pages_per_tile;
  const int pair_logical = pair / pages_per_tile;  // within its physical page
  // The two lanes of a page (a page past the history leaves both idle).
  const unsigned pair_mask = 3u << (threadIdx.x & 30);
  // A grid of more blocks than run at once (a job per query head of many sequences) keeps
  // only its share of each group's blocks, so the groups' work fits in one wave.
  const int64_t rank = int64_t{blockIdx.y - group.first} * gridDim.x + blockIdx.x;
  const int64_t group_blocks = int64_t{group.jobs} * gridDim.x;
  const int64_t grid_blocks = int64_t{gridDim.x} * gridDim.y;
  const int64_t tile_stride = grid_blocks > a.resident_blocks
                                  ? max(int64_t{1}, group_blocks * a.resident_blocks / grid_blocks)
                                  : group_blocks;
  if (rank >= tile_stride) return;
  // Early loads: the previous kernel (the step's append) changes only the statistics of
  // the newest logical page, so a first tile without it is copied while that kernel runs;
  // the queries it writes are read after the wait.
  const bool first_early =
      a.early_loads && rank < num_tiles && rank != (num_pages - 1) / pages_per_tile;
  auto start_first_tile = [&] {
#ifdef LSERVE_SM90A_DEVICE
    if (threadIdx.x < 32) read_table(rank);  // warp 0 reads the table and copies
#endif
    load_tile(rank, 0, rank + tile_stride);
  };
  if (first_early) start_first_tile();
  if (a.early_loads) ChainWait();
  if (one_pass) load_q(0, group.heads);
  __syncthreads();  // the queries are in shared memory
  if (!first_early && rank < num_tiles) start_first_tile();
  // Tile n's stage (n mod stages) and barrier phase ((n / stages) mod 2), counted rather
  // than divided (a 64-bit division is a long instruction sequence, once per tile).
  int stage = 0;
  uint32_t phase = 0;
  for (int64_t tile = rank, n = 0; tile < num_tiles; tile += tile_stride, ++n) {
    const int buffer = static_cast<int>(n & 1);  // of best_shared
    const bool more = tile + tile_stride < num_tiles;
    // With two stages the next tile is copied into the other one now (the previous tile's
    // last barrier freed it); with one, after this tile's rows are read.
    if (more && a.stages > 1) {
      load_tile(tile + tile_stride, stage + 1 == a.stages ? 0 : stage + 1, tile + 2 * tile_stride);
    }
#ifdef LSERVE_SM90A_DEVICE
    // The barrier's phase completes once every byte of this tile has landed.
    internal::sm90::BarrierWait(&landed[stage], phase);
#else
    if (more && a.stages > 1) {
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();  // this tile's rows have landed for every thread
#endif
    const int64_t first_page = tile * pages_per_tile;
    const bool active = pair_logical < logical_per_page &&
                        (first_page + pair_segment) * logical_per_page + pair_logical < num_logical;
    const uint16_t* kmax =
        staged + stage * stage_elems + pair_segment * segment_elems + pair_logical * kHeadDim;
    const uint16_t* kmin = kmax + kmin_staged;
    float job_best[kScoreHeadsPerPass];
#pragma unroll
    for (int j = 0; j < kScoreHeadsPerPass; ++j) job_best[j] = -INFINITY;
    for (int pass = 0; pass < group.heads; pass += kScoreHeadsPerPass) {
      const int heads = min(kScoreHeadsPerPass, group.heads - pass);
      if (!one_pass) {
        __syncthreads();  // the previous pass is done with the queries
        load_q(pass, heads);
        __syncthreads();
      }
      if (!active) continue;
      float partial[kScoreHeadsPerPass][4] = {};
      switch (heads) {
        case 1:
          AddPageBounds<kHeadDim, 1>(kmax, kmin, q_pos, q_neg, half, partial);
          break;
        case 2:
          AddPageBounds<kHeadDim, 2>(kmax, kmin, q_pos, q_neg, half, partial);
          break;
        case 3:
          AddPageBounds<kHeadDim, 3>(kmax, kmin, q_pos, q_neg, half, partial);
          break;
        default:
          AddPageBounds<kHeadDim, 4>(kmax, kmin, q_pos, q_neg, half, partial);
          break;
      }
#pragma unroll
      for (int h = 0; h < kScoreHeadsPerPass; ++h) {
        if (h >= heads) break;
        // Sums 0-3 here (even thread) and 4-7 (odd), added in order by the even thread.
        float upper[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) upper[u] = __shfl_down_sync(pair_mask, partial[h][u], 1);
        float score = 0.0f;
#pragma unroll
        for (int u = 0; u < 4; ++u) score = __fadd_rn(score, partial[h][u]);
#pragma unroll
        for (int u = 0; u < 4; ++u) score = __fadd_rn(score, upper[u]);
        // group.jobs <= kScoreHeadsPerPass: every job has a head.
        const int j = group.head_job[pass + h];
#pragma unroll
        for (int k = 0; k < kScoreHeadsPerPass; ++k) {
          if (k == j) job_best[k] = job_best[k] < score ? score : job_best[k];
        }
      }
    }
    const int tile_page = pair_segment * logical_per_page + pair_logical;
#pragma unroll
    for (int j = 0; j < kScoreHeadsPerPass; ++j) {
      if (j < group.jobs && half == 0 && pair_logical < logical_per_page) {
        best_shared[buffer][j][tile_page] = job_best[j];
      }
    }
    // Every thread is done with this tile's rows (the next load may reuse the stage) and
    // its bounds are in best_shared.
    __syncthreads();
    if (more && a.stages == 1) load_tile(tile + tile_stride, 0, tile + 2 * tile_stride);
    // Physical pages: the max over their logical pages (those past the history are -inf).
    for (int i = threadIdx.x; i < group.jobs * pages_per_tile; i += blockDim.x) {
      const int j = i / pages_per_tile;
      const int k = i % pages_per_tile;
      const int64_t page = first_page + k;
      if (page >= num_pages) continue;
      float best = -INFINITY;
      for (int l = 0; l < logical_per_page; ++l) {
        const float x = best_shared[buffer][j][k * logical_per_page + l];
        best = best < x ? x : best;
      }
      a.scores[a.jobs[group.first + j].out_offset + page] = best;
    }
    if (++stage == a.stages) {
      stage = 0;
      phase ^= 1u;
    }
  }
}

using ScoreKernelFn = void (*)(ScoreArgs);

ScoreKernelFn ScoreKernelFor(int head_dim) {
  switch (head_dim) {
    case 32:
      return ScoreKernel<32>;
    case 64:
      return ScoreKernel<64>;
    case 128:
      return ScoreKernel<128>;
    case 256:
      return ScoreKernel<256>;
    default:
      return nullptr;
  }
}

// Blocks of ScoreKernel<head_dim> resident per SM with the shared memory of its page
// geometry and stage count, or 0 when the kernel cannot be configured. Each kernel's
// shared-memory limit is set once, for the most any page size takes; occupancies are kept
// per geometry.
int ScoreBlocksPerSm(int head_dim, int logical_per_page, int stages) {
  static const bool configured = [] {
    for (int d : {32, 64, 128, 256}) {
      if (cudaFuncSetAttribute(ScoreKernelFor(d), cudaFuncAttributeMaxDynamicSharedMemorySize,
                               StagedBytes(d, 1, kScoreMaxStages)) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
      }
    }
    return true;
  }();
  if (!configured) return 0;
  static std::array<std::atomic<int>, 4 * (kScoreTilePages + 1) * kScoreMaxStages> known{};
  int dim_index = 0;
  while (dim_index < 4 && (32 << dim_index) != head_dim) ++dim_index;
  if (dim_index == 4 || stages < 1 || stages > kScoreMaxStages) return 0;
  const int geometry = dim_index * (kScoreTilePages + 1) + logical_per_page;
  std::atomic<int>& entry = known[geometry * kScoreMaxStages + stages - 1];  // 0: not yet known
  int blocks = entry.load(std::memory_order_relaxed);
  if (blocks == 0) {
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(
            &blocks, ScoreKernelFor(head_dim), kScoreThreads,
            StagedBytes(head_dim, logical_per_page, stages)) != cudaSuccess) {
      (void)cudaGetLastError();
      blocks = -1;
    }
    entry.store(blocks == 0 ? -1 : blocks, std::memory_order_relaxed);
  }
  return std::max(0, blocks);
}

}  // namespace

absl::Status ScorePages(const ScorePagesParams& p, void* stream) {
  RETURN_IF_ERROR(internal::CheckLayer(p.kv, "page scoring"));
  if (p.q_row_stride % 8 != 0 || !internal::IsAligned16(p.q)) {
    return absl::InvalidArgumentError("cuda page scoring: q rows must be 16-byte aligned");
  }
  if (p.num_jobs == 0) return absl::OkStatus();
  const int d = p.kv.head_dim;
  const int logical_per_page = p.kv.page_size / p.kv.logical_page_size;
  const ScoreKernelFn kernel = ScoreKernelFor(d);
  if (kernel == nullptr || logical_per_page > kScoreTilePages) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda page scoring: head_dim 32, 64, 128 or 256 and at most ", kScoreTilePages,
                     " logical pages per page; got head_dim ", d, " and ", logical_per_page));
  }
  // One wave of blocks in all, each looping over its share of the tiles, so the per-block
  // set-up (finding the group, loading its queries) is paid once per resident block. Two
  // stages overlap a block's tiles; one stage fits more blocks per SM, and is taken when
  // its wave leaves every block at most one tile. Jobs over the same statistics (the query
  // heads of a GQA group scored apart: more jobs than sequences times dense heads) share
  // their groups' blocks, as many as kScoreHeadsPerPass together.
  const int pages_per_tile = kScoreTilePages / logical_per_page;
  const int64_t pages = (int64_t{p.tables.max_kv_len} + p.kv.page_size - 1) / p.kv.page_size;
  const int64_t tiles = (pages + pages_per_tile - 1) / pages_per_tile;
  const int64_t streams =
      int64_t{std::max(1, p.tables.num_seqs)} * std::max(1, p.kv.dense.num_heads);
  const int64_t group_jobs =
      std::clamp<int64_t>(p.num_jobs / streams, 1, internal::kScoreHeadsPerPass);
  // LSERVE_SCORE_STAGES=1 or 2 fixes the stage count (the tests run both).
  const char* forced_text = std::getenv("LSERVE_SCORE_STAGES");
  const int forced = forced_text != nullptr ? std::atoi(forced_text) : 0;
  int stages = kScoreMaxStages;
  int64_t resident = 0;
  int blocks = 0;
  for (const int candidate : {1, kScoreMaxStages}) {
    if (forced >= 1 && forced <= kScoreMaxStages && candidate != forced) continue;
    const int64_t fit =
        int64_t{CurrentDeviceMultiprocessors()} * ScoreBlocksPerSm(d, logical_per_page, candidate);
    if (fit == 0) continue;
    const int64_t per_job =
        std::clamp<int64_t>(std::min<int64_t>(tiles, fit / p.num_jobs), 1, 4096);
    stages = candidate;
    resident = fit;
    blocks = static_cast<int>(per_job);
    if (per_job * group_jobs >= tiles) break;  // one tile per block
  }
  const int smem = StagedBytes(d, logical_per_page, stages);
  if (resident == 0) {
    return absl::InternalError(absl::StrCat("cuda page scoring: cannot run the kernel with ", smem,
                                            " bytes of shared memory"));
  }
  const ScoreArgs args{p.kv,   p.tables,      static_cast<const uint16_t*>(p.q), p.q_row_stride,
                       p.jobs, p.scores,      static_cast<int>(p.num_jobs),      resident,
                       stages, p.after_append};
  LaunchChained(kernel, dim3(blocks, p.num_jobs), kScoreThreads, smem, internal::AsStream(stream),
                args);
  return CheckLaunch("ScoreKernel");
}

}  // namespace lserve::cuda
