// Internal to kernels/cuda: pieces of the page-scoring kernel (page_score.cu): how its
// blocks find the group of jobs they score together (jobs over the same statistics: one
// sequence, KV head and query row), and the exact bound of one staged logical page.
#ifndef LSERVE_KERNELS_CUDA_PAGE_SCORE_CUH_
#define LSERVE_KERNELS_CUDA_PAGE_SCORE_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention_params.h"

namespace lserve::cuda::internal {

constexpr int kScoreHeadsPerPass = 4;
constexpr int kScoreMaxHeads = 64;  // query heads of one group of jobs
constexpr int kScoreWindow = 16;    // jobs on either side read into shared memory

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

// What a block needs to know of its group of jobs, found by its first thread.
struct ScoreGroup {
  int first;
  int jobs;
  int heads;
  int8_t head_job[kScoreMaxHeads];  // job (within the group) of each head
  int16_t head_index[kScoreMaxHeads];
};

__device__ void FindBlockGroup(const PageScoreJob* jobs, int num_jobs, ScoreGroup* group) {
  // The jobs around this block's, read at once: the group search then reads shared memory.
  __shared__ PageScoreJob window[2 * kScoreWindow];
  const int window_first = max(0, static_cast<int>(blockIdx.y) - kScoreWindow);
  for (int i = threadIdx.x; i < 2 * kScoreWindow && window_first + i < num_jobs; i += blockDim.x) {
    window[i] = jobs[window_first + i];
  }
  __syncthreads();
  auto job_at = [&](int j) -> PageScoreJob {
    const int k = j - window_first;
    return k >= 0 && k < 2 * kScoreWindow ? window[k] : jobs[j];
  };
  if (threadIdx.x == 0) {
    FindScoreGroup(job_at, num_jobs, blockIdx.y, &group->first, &group->jobs);
    int heads = 0;
    for (int j = 0; j < group->jobs; ++j) {
      const PageScoreJob job = job_at(group->first + j);
      for (int g = 0; g < job.num_q_heads && heads < kScoreMaxHeads; ++g, ++heads) {
        group->head_job[heads] = static_cast<int8_t>(j);
        group->head_index[heads] = static_cast<int16_t>(job.first_q_head + g);
      }
    }
    group->heads = heads;
  }
  __syncthreads();
}

// Adds the bounds of one staged logical page, for `heads` query heads, to the four partial
// sums this thread keeps, like cpu::LogicalPageScore: eight interleaved partial sums in all
// (channel c goes to sum c % 8); `half` picks sums 0-3 (8-byte halves at even offsets) or
// 4-7. A channel's bound max(q kmax, q kmin) is q kmax when q >= 0 and q kmin otherwise
// (kmax >= kmin), so with q+ = max(q, 0) and q- = min(q, 0) it is added as
// fma(q-, kmin, fma(q+, kmax, sum)): one of the two products is zero, which leaves the sum
// as it is, and the other, of two bf16 values, is exact in float32, so each fma rounds
// exactly where the CPU's product-then-add does.
template <int kHeadDim, int kHeads>
__device__ __forceinline__ void AddPageBounds(const uint16_t* kmax, const uint16_t* kmin,
                                              const float (*q_pos)[kHeadDim],
                                              const float (*q_neg)[kHeadDim], int half,
                                              float (&partial)[kScoreHeadsPerPass][4]) {
#pragma unroll
  for (int c0 = 0; c0 < kHeadDim; c0 += 8) {
    const int c = c0 + 4 * half;
    const uint2 raw_hi = *reinterpret_cast<const uint2*>(kmax + c);
    const uint2 raw_lo = *reinterpret_cast<const uint2*>(kmin + c);
    const float hi[4] = {__uint_as_float(raw_hi.x << 16), __uint_as_float(raw_hi.x & 0xFFFF0000u),
                         __uint_as_float(raw_hi.y << 16), __uint_as_float(raw_hi.y & 0xFFFF0000u)};
    const float lo[4] = {__uint_as_float(raw_lo.x << 16), __uint_as_float(raw_lo.x & 0xFFFF0000u),
                         __uint_as_float(raw_lo.y << 16), __uint_as_float(raw_lo.y & 0xFFFF0000u)};
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      const float4 pos = *reinterpret_cast<const float4*>(&q_pos[h][c]);
      const float4 neg = *reinterpret_cast<const float4*>(&q_neg[h][c]);
      const float qp[4] = {pos.x, pos.y, pos.z, pos.w};
      const float qn[4] = {neg.x, neg.y, neg.z, neg.w};
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        partial[h][u] = __fmaf_rn(qn[u], lo[u], __fmaf_rn(qp[u], hi[u], partial[h][u]));
      }
    }
  }
}

}  // namespace lserve::cuda::internal

#endif  // LSERVE_KERNELS_CUDA_PAGE_SCORE_CUH_
