// Page scoring and top-k page selection of the CUDA backend's decode path.
#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_scan.cuh>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/chained_launch.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/paged_kv.cuh"

namespace lserve::cuda {
namespace {

using internal::Bf16ToFloat;
using internal::CheckLaunch;
using internal::KvLocation;

constexpr int kScoreThreads = 128;
constexpr int kSelectThreads = 512;

// ----- scoring ---------------------------------------------------------------------------

struct ScoreArgs {
  PagedKvLayer kv;
  PageTableView t;
  const uint16_t* q;
  int64_t q_row_stride;
  const PageScoreJob* jobs;
  float* scores;
};

constexpr int kScoreHeadsPerPass = 4;
// Two threads per logical page, each summing four of the eight interleaved partial sums.
constexpr int kScoreLanesPerPage = 2;
constexpr int kScorePagesPerBlock = kScoreThreads / kScoreLanesPerPage;
constexpr int kScoreMaxHeads = 64;  // query heads of one group of jobs
constexpr int kScoreMaxHeadDim = 256;
constexpr int kScoreBatch = 4;    // chunks of a statistics row in flight per thread
constexpr int kScoreWindow = 16;  // jobs on either side read into shared memory

__device__ __forceinline__ bool SameScoreInput(const PageScoreJob& x, const PageScoreJob& y) {
  return x.seq == y.seq && x.kv_head == y.kv_head && x.q_row == y.q_row;
}

// Jobs that read the same statistics (same sequence, KV head and query row, e.g. the
// query heads of one GQA group scored apart) are scored by one block, which reads each
// logical page's kmax/kmin once for all of them: jobs [first, first + count) holding at
// most kScoreHeadsPerPass heads and jobs together, or one job alone (of at most
// kScoreMaxHeads heads). The blocks of every job of a group share its pages.
template <typename JobAt>
__device__ void FindScoreGroup(JobAt job_at, int num_jobs, int self, int* first, int* count) {
  const PageScoreJob me = job_at(self);
  int run = self;
  while (run > 0 && SameScoreInput(job_at(run - 1), me)) --run;
  int group = run;
  int heads = 0;
  int j = run;
  for (; j < num_jobs && SameScoreInput(job_at(j), me); ++j) {
    const int job_heads = job_at(j).num_q_heads;
    if (j > group && (heads + job_heads > kScoreHeadsPerPass || j - group == kScoreHeadsPerPass)) {
      if (j > self) break;
      group = j;
      heads = 0;
    }
    heads += job_heads;
  }
  *first = group;
  *count = j - group;
}

// Two adjacent threads per logical page sum its bound for every query head of the group
// like cpu::LogicalPageScore: eight interleaved partial sums (channel c goes to sum c % 8),
// each product rounded before it is added (no FMA contraction); the even thread keeps
// sums 0-3 and the odd one 4-7, reading 8-byte halves of each 16-byte chunk, and the even
// thread adds the eight in order. A job's page score is the max over its heads and the
// page's logical pages (exact in any order).
__global__ void __launch_bounds__(kScoreThreads, 3) ScoreKernel(ScoreArgs a, int num_jobs) {
  ChainWait();
  __shared__ float q_shared[kScoreHeadsPerPass][kScoreMaxHeadDim];
  __shared__ float best_shared[kScoreHeadsPerPass][kScorePagesPerBlock];
  __shared__ int8_t head_job[kScoreMaxHeads];  // job (within the group) of each head
  __shared__ int16_t head_index[kScoreMaxHeads];
  __shared__ int group_first, group_jobs, group_heads;
  // The jobs around this block's, read at once: the group search then reads shared memory.
  __shared__ PageScoreJob window[2 * kScoreWindow];
  const int window_first = max(0, static_cast<int>(blockIdx.y) - kScoreWindow);
  for (int i = threadIdx.x; i < 2 * kScoreWindow && window_first + i < num_jobs; i += blockDim.x) {
    window[i] = a.jobs[window_first + i];
  }
  __syncthreads();
  auto job_at = [&](int j) -> PageScoreJob {
    const int k = j - window_first;
    return k >= 0 && k < 2 * kScoreWindow ? window[k] : a.jobs[j];
  };
  if (threadIdx.x == 0) {
    FindScoreGroup(job_at, num_jobs, blockIdx.y, &group_first, &group_jobs);
    int heads = 0;
    for (int j = 0; j < group_jobs; ++j) {
      const PageScoreJob job = job_at(group_first + j);
      for (int g = 0; g < job.num_q_heads && heads < kScoreMaxHeads; ++g, ++heads) {
        head_job[heads] = static_cast<int8_t>(j);
        head_index[heads] = static_cast<int16_t>(job.first_q_head + g);
      }
    }
    group_heads = heads;
  }
  __syncthreads();
  const PageScoreJob lead = job_at(group_first);
  const int d = a.kv.head_dim;
  const int page_size = a.kv.page_size;
  const int logical = a.kv.logical_page_size;
  const int logical_per_page = page_size / logical;
  const int64_t len = a.t.kv_len[lead.seq];
  const int64_t num_logical = (len + logical - 1) / logical;
  const int32_t* table = a.t.dense_indices + a.t.dense_indptr[lead.seq];
  const int slot = a.kv.kv_head_slot[lead.kv_head];
  const uint16_t* row = a.q + int64_t{lead.q_row} * a.q_row_stride;
  const int64_t kmin_offset = internal::KminOffset(a.kv.dense, logical_per_page, d);
  const int pages_per_block = kScorePagesPerBlock / logical_per_page;
  const int half = threadIdx.x % kScoreLanesPerPage;        // which four partial sums
  const int block_page = threadIdx.x / kScoreLanesPerPage;  // logical page within the block
  // The two lanes of a page (a page past the history leaves both idle).
  const unsigned pair_mask = 3u << (threadIdx.x & 30);
  // The group's blocks (gridDim.x per job) stride over its logical pages together.
  const int64_t rank = int64_t{blockIdx.y - group_first} * gridDim.x + blockIdx.x;
  const int64_t stride = int64_t{group_jobs} * gridDim.x * kScorePagesPerBlock;
  for (int64_t base = rank * kScorePagesPerBlock; base < num_logical; base += stride) {
    const int64_t lp = base + block_page;
    const bool active = lp < num_logical;
    const uint16_t* kmax = nullptr;
    if (active) {
      kmax = internal::KmaxRow(a.kv.dense, table[lp / logical_per_page], slot,
                               static_cast<int>(lp % logical_per_page), page_size, logical_per_page,
                               d);
    }
    float job_best[kScoreHeadsPerPass];
#pragma unroll
    for (int j = 0; j < kScoreHeadsPerPass; ++j) job_best[j] = -INFINITY;
    for (int pass = 0; pass < group_heads; pass += kScoreHeadsPerPass) {
      const int heads = min(kScoreHeadsPerPass, group_heads - pass);
      __syncthreads();  // the previous pass is done with q_shared
      for (int i = threadIdx.x; i < heads * d; i += blockDim.x) {
        q_shared[i / d][i % d] = Bf16ToFloat(row[int64_t{head_index[pass + i / d]} * d + i % d]);
      }
      __syncthreads();
      if (!active) continue;
      float partial[kScoreHeadsPerPass][4] = {};
      // kScoreBatch chunks of kmax and kmin (this thread's 8-byte halves) are loaded a
      // batch ahead of their use, so their latencies overlap the math; the sums still run
      // over the channels in order.
      uint2 next_hi[kScoreBatch], next_lo[kScoreBatch];
      auto load_batch = [&](int c0) {
#pragma unroll
        for (int k = 0; k < kScoreBatch; ++k) {
          if (c0 + 8 * k < d) {
            const int at = c0 + 8 * k + 4 * half;
            next_hi[k] = *reinterpret_cast<const uint2*>(kmax + at);
            next_lo[k] = *reinterpret_cast<const uint2*>(kmax + kmin_offset + at);
          }
        }
      };
      load_batch(0);
      for (int c0 = 0; c0 < d; c0 += 8 * kScoreBatch) {
        uint2 raw_hi[kScoreBatch], raw_lo[kScoreBatch];
#pragma unroll
        for (int k = 0; k < kScoreBatch; ++k) {
          raw_hi[k] = next_hi[k];
          raw_lo[k] = next_lo[k];
        }
        if (c0 + 8 * kScoreBatch < d) load_batch(c0 + 8 * kScoreBatch);
#pragma unroll
        for (int k = 0; k < kScoreBatch; ++k) {
          if (c0 + 8 * k >= d) break;
          const int c = c0 + 8 * k + 4 * half;
          const float hi[4] = {
              __uint_as_float(raw_hi[k].x << 16), __uint_as_float(raw_hi[k].x & 0xFFFF0000u),
              __uint_as_float(raw_hi[k].y << 16), __uint_as_float(raw_hi[k].y & 0xFFFF0000u)};
          const float lo[4] = {
              __uint_as_float(raw_lo[k].x << 16), __uint_as_float(raw_lo[k].x & 0xFFFF0000u),
              __uint_as_float(raw_lo[k].y << 16), __uint_as_float(raw_lo[k].y & 0xFFFF0000u)};
#pragma unroll
          for (int h = 0; h < kScoreHeadsPerPass; ++h) {
            if (h >= heads) break;
#pragma unroll
            for (int u = 0; u < 4; ++u) {
              const float qv = q_shared[h][c + u];
              const float x = __fmul_rn(qv, hi[u]);
              const float y = __fmul_rn(qv, lo[u]);
              partial[h][u] = __fadd_rn(partial[h][u], x < y ? y : x);
            }
          }
        }
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
        // group_jobs <= kScoreHeadsPerPass: every job has a head.
        const int j = head_job[pass + h];
#pragma unroll
        for (int k = 0; k < kScoreHeadsPerPass; ++k) {
          if (k == j) job_best[k] = job_best[k] < score ? score : job_best[k];
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kScoreHeadsPerPass; ++j) {
      if (j < group_jobs && half == 0) best_shared[j][block_page] = job_best[j];
    }
    __syncthreads();
    // Physical pages: the max over their logical pages (those past the history are -inf).
    for (int i = threadIdx.x; i < group_jobs * pages_per_block; i += blockDim.x) {
      const int j = i / pages_per_block;
      const int k = i % pages_per_block;
      const int64_t page = base / logical_per_page + k;
      if (page * logical_per_page >= num_logical) continue;
      float best = -INFINITY;
      for (int l = 0; l < logical_per_page; ++l) {
        const float x = best_shared[j][k * logical_per_page + l];
        best = best < x ? x : best;
      }
      a.scores[job_at(group_first + j).out_offset + page] = best;
    }
  }
}

// ----- selection -------------------------------------------------------------------------

// Order-preserving map of a score to an unsigned key (zeros of either sign are equal).
__device__ __forceinline__ uint32_t OrderedKey(float score) {
  if (score == 0.0f) score = 0.0f;
  const uint32_t bits = __float_as_uint(score);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Keys of this many pages fit in the select kernel's shared memory (longer histories read
// the scores from global memory in every pass).
constexpr int kSelectSharedKeys = 8192;

// One block per job: radix select (four 8-bit passes) finds the key of the keep-th best
// page other than the newest; then each thread takes a contiguous run of pages, and two
// block scans (ties, then pages taken) place, in index order, the pages above that key and
// the lowest-indexed pages equal to it.
__global__ void __launch_bounds__(kSelectThreads) SelectKernel(SelectPagesParams p) {
  ChainWait();
  using Scan = cub::BlockScan<int, kSelectThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ uint32_t shared_keys[kSelectSharedKeys];
  __shared__ int histogram[256];
  __shared__ uint32_t shared_prefix;
  __shared__ int shared_remaining;
  const PageScoreJob job = p.jobs[blockIdx.x];
  const int64_t len = p.kv_len[job.seq];
  const int n = static_cast<int>((len + p.page_size - 1) / p.page_size);
  const int64_t out_row = p.out_rows != nullptr ? p.out_rows[blockIdx.x] : blockIdx.x;
  int32_t* out = p.selected + out_row * (p.selected_stride > 0 ? p.selected_stride : p.max_pages);
  const float* scores = p.scores + job.out_offset;
  if (n <= p.max_pages) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = i;
    if (threadIdx.x == 0) p.counts[out_row] = n;
    return;
  }
  const int keep = p.max_pages - 1;
  const int others = n - 1;
  const bool in_shared = others <= kSelectSharedKeys;
  if (in_shared) {
    for (int i = threadIdx.x; i < others; i += blockDim.x) shared_keys[i] = OrderedKey(scores[i]);
  }
  auto key_at = [&](int i) { return in_shared ? shared_keys[i] : OrderedKey(scores[i]); };
  if (threadIdx.x == 0) {
    shared_prefix = 0;
    shared_remaining = keep;
  }
  uint32_t mask = 0;
  for (int shift = 24; shift >= 0 && keep > 0; shift -= 8) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) histogram[i] = 0;
    __syncthreads();
    const uint32_t prefix = shared_prefix;
    for (int i = threadIdx.x; i < others; i += blockDim.x) {
      const uint32_t key = key_at(i);
      if ((key & mask) == prefix) atomicAdd(&histogram[(key >> shift) & 255], 1);
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Warp 0 finds the bucket holding the remaining-th largest key: lane l sums buckets
      // 255 - 8l down to 248 - 8l, a prefix sum over lanes locates the lane, which then
      // walks its eight buckets.
      const int lane = threadIdx.x;
      const int remaining = shared_remaining;
      int own = 0;
      for (int k = 0; k < 8; ++k) own += histogram[255 - 8 * lane - k];
      int inclusive = own;
      for (int offset = 1; offset < 32; offset <<= 1) {
        const int other = __shfl_up_sync(0xFFFFFFFFu, inclusive, offset);
        if (lane >= offset) inclusive += other;
      }
      const unsigned found = __ballot_sync(0xFFFFFFFFu, inclusive >= remaining);
      if (lane == __ffs(found) - 1) {
        int above = inclusive - own;
        for (int k = 0; k < 8; ++k) {
          const int bucket = 255 - 8 * lane - k;
          if (above + histogram[bucket] >= remaining) {
            shared_remaining = remaining - above;
            shared_prefix = prefix | (static_cast<uint32_t>(bucket) << shift);
            break;
          }
          above += histogram[bucket];
        }
      }
    }
    mask |= 255u << shift;
    __syncthreads();
  }
  if (keep > 0) {
    const uint32_t threshold = shared_prefix;
    const int ties_wanted = shared_remaining;
    const int run = (others + kSelectThreads - 1) / kSelectThreads;
    const int run_begin = min(others, static_cast<int>(threadIdx.x) * run);
    const int run_end = min(others, run_begin + run);
    int ties = 0;
    for (int i = run_begin; i < run_end; ++i) ties += key_at(i) == threshold ? 1 : 0;
    int tie_rank = 0;
    Scan(scan_storage).ExclusiveSum(ties, tie_rank);
    __syncthreads();
    int taken = 0;
    for (int i = run_begin, tie = tie_rank; i < run_end; ++i) {
      const uint32_t key = key_at(i);
      if (key == threshold) taken += tie++ < ties_wanted ? 1 : 0;
      taken += key > threshold ? 1 : 0;
    }
    int position = 0;
    Scan(scan_storage).ExclusiveSum(taken, position);
    for (int i = run_begin, tie = tie_rank; i < run_end; ++i) {
      const uint32_t key = key_at(i);
      const bool take = key > threshold || (key == threshold && tie++ < ties_wanted);
      if (take) out[position++] = i;
    }
  }
  if (threadIdx.x == 0) {
    out[keep] = n - 1;
    p.counts[out_row] = keep + 1;
  }
}

}  // namespace

absl::Status ScorePages(const ScorePagesParams& p, void* stream) {
  RETURN_IF_ERROR(internal::CheckLayer(p.kv, "page scoring"));
  if (p.q_row_stride % 8 != 0 || !internal::IsAligned16(p.q)) {
    return absl::InvalidArgumentError("cuda page scoring: q rows must be 16-byte aligned");
  }
  if (p.num_jobs == 0) return absl::OkStatus();
  if (p.kv.head_dim > kScoreMaxHeadDim ||
      p.kv.page_size / p.kv.logical_page_size > kScorePagesPerBlock) {
    return absl::InvalidArgumentError(absl::StrCat("cuda page scoring: head_dim at most ",
                                                   kScoreMaxHeadDim, " and at most ",
                                                   kScorePagesPerBlock, " logical pages per page"));
  }
  ScoreArgs args{p.kv,           p.tables, static_cast<const uint16_t*>(p.q),
                 p.q_row_stride, p.jobs,   p.scores};
  const int64_t logical_pages =
      (int64_t{p.tables.max_kv_len} + p.kv.logical_page_size - 1) / p.kv.logical_page_size;
  // About two waves of blocks in all, each looping over its share of the pages, so the
  // per-block set-up (finding the group, loading its queries) is paid a few times only.
  static const int resident = [] {
    int device = 0;
    int sms = 132;
    int blocks_per_sm = 3;
    (void)cudaGetDevice(&device);
    (void)cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    (void)cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm, ScoreKernel, kScoreThreads,
                                                        0);
    return std::max(1, sms * std::max(1, blocks_per_sm));
  }();
  // Rounded down, so the blocks make whole waves.
  const int64_t per_job_cap = std::max<int64_t>(1, 2 * resident / p.num_jobs);
  const int blocks = static_cast<int>(
      std::clamp<int64_t>((logical_pages + kScorePagesPerBlock - 1) / kScorePagesPerBlock, 1,
                          std::min<int64_t>(per_job_cap, 4096)));
  LaunchChained(ScoreKernel, dim3(blocks, p.num_jobs), kScoreThreads, 0, internal::AsStream(stream),
                args, static_cast<int>(p.num_jobs));
  return CheckLaunch("ScoreKernel");
}

absl::Status SelectPages(const SelectPagesParams& p, void* stream) {
  if (p.page_size <= 0 || p.max_pages <= 0 ||
      (p.selected_stride > 0 && p.selected_stride < p.max_pages)) {
    return absl::InvalidArgumentError(
        "page selection needs page_size, max_pages > 0 and rows of max_pages or more");
  }
  if (p.num_jobs == 0) return absl::OkStatus();
  LaunchChained(SelectKernel, static_cast<unsigned>(p.num_jobs), kSelectThreads, 0,
                internal::AsStream(stream), p);
  return CheckLaunch("SelectKernel");
}

}  // namespace lserve::cuda
