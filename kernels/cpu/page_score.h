// Decode page scoring for the CPU backend (DESIGN.md §3, dynamic sparsity).
#ifndef LSERVE_KERNELS_CPU_PAGE_SCORE_H_
#define LSERVE_KERNELS_CPU_PAGE_SCORE_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "common/thread_pool.h"
#include "kernels/attention_params.h"

namespace lserve::cpu {

// S = sum_c max(q_c * kmax_c, q_c * kmin_c) over head_dim channels.
float LogicalPageScore(const float* q, const float* kmax, const float* kmin, int head_dim);

// q.k summed in the same order as LogicalPageScore (eight interleaved partial sums), so
// the float32 bound S >= q.k holds exactly: each term of S is >= the matching term of
// q.k and rounding is monotonic.
float ScoreOrderDot(const float* q, const float* k, int head_dim);

// Float32 pools only; jobs run in parallel.
absl::Status ScorePages(const ScorePagesParams& params, ThreadPool* pool);

// The newest page plus the max_pages - 1 best others, as ascending page indices. Equal
// scores prefer the lower index. Everything when the pages fit.
std::vector<int32_t> SelectTopPages(std::span<const float> scores, int64_t max_pages);

absl::Status SelectPages(const SelectPagesParams& params);

}  // namespace lserve::cpu

#endif  // LSERVE_KERNELS_CPU_PAGE_SCORE_H_
