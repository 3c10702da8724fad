// Built with -ffp-contract=off (kernels/CMakeLists.txt): the page bound S >= q.k must hold
// exactly in float32, so products are rounded before they are added in both sums.
#include "kernels/cpu/page_score.h"

#include <algorithm>
#include <limits>
#include <numeric>

namespace lserve::cpu {
namespace {

// Sums term(c) over channels with eight interleaved partial sums (one SIMD register).
template <typename Term>
float InterleavedSum(int n, Term term) {
  float partial[8] = {};
  int c = 0;
  for (; c + 8 <= n; c += 8) {
    for (int j = 0; j < 8; ++j) partial[j] += term(c + j);
  }
  for (int j = 0; c < n; ++c, ++j) partial[j] += term(c);
  float sum = 0.0f;
  for (int j = 0; j < 8; ++j) sum += partial[j];
  return sum;
}

}  // namespace

float LogicalPageScore(const float* q, const float* kmax, const float* kmin, int head_dim) {
  return InterleavedSum(head_dim, [&](int c) { return std::max(q[c] * kmax[c], q[c] * kmin[c]); });
}

float ScoreOrderDot(const float* q, const float* k, int head_dim) {
  return InterleavedSum(head_dim, [&](int c) { return q[c] * k[c]; });
}

absl::Status ScorePages(const ScorePagesParams& p, ThreadPool* pool) {
  const PagedKvLayer& kv = p.kv;
  if (kv.dtype != DType::kF32) {
    return absl::InvalidArgumentError("cpu page scoring reads float32 pools only");
  }
  const int d = kv.head_dim;
  const int64_t page = kv.page_size;
  const int64_t logical = kv.logical_page_size;
  const int64_t logical_per_page = page / logical;
  const int64_t heads = kv.dense.num_heads;
  const float* q = static_cast<const float*>(p.q);
  const float* base = static_cast<const float*>(kv.dense.base);
  ParallelFor(pool, p.num_jobs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const PageScoreJob& job = p.jobs[j];
      const int64_t kv_len = p.tables.kv_len[job.seq];
      const int64_t num_pages = (kv_len + page - 1) / page;
      const int32_t* table = p.tables.dense_indices + p.tables.dense_indptr[job.seq];
      const int64_t slot = kv.kv_head_slot[job.kv_head];
      const float* row = q + int64_t{job.q_row} * p.q_row_stride;
      for (int64_t i = 0; i < num_pages; ++i) {
        // Only logical pages that hold tokens: later ones keep another sequence's keys.
        const int64_t filled =
            std::min(logical_per_page, (kv_len - i * page + logical - 1) / logical);
        const float* stats = base + table[i] * kv.dense.page_stride + 2 * heads * page * d;
        float best = -std::numeric_limits<float>::infinity();
        for (int64_t l = 0; l < filled; ++l) {
          const float* kmax = stats + (slot * logical_per_page + l) * d;
          const float* kmin = stats + ((heads + slot) * logical_per_page + l) * d;
          for (int g = 0; g < job.num_q_heads; ++g) {
            const float* qh = row + int64_t{job.first_q_head + g} * d;
            best = std::max(best, LogicalPageScore(qh, kmax, kmin, d));
          }
        }
        p.scores[job.out_offset + i] = best;
      }
    }
  });
  return absl::OkStatus();
}

std::vector<int32_t> SelectTopPages(std::span<const float> scores, int64_t max_pages) {
  const int32_t n = static_cast<int32_t>(scores.size());
  std::vector<int32_t> pages;
  if (n == 0) return pages;
  if (n <= max_pages) {
    pages.resize(n);
    std::iota(pages.begin(), pages.end(), 0);
    return pages;
  }
  std::vector<int32_t> others(n - 1);
  std::iota(others.begin(), others.end(), 0);
  const int64_t keep = std::max<int64_t>(0, max_pages - 1);
  std::partial_sort(others.begin(), others.begin() + keep, others.end(), [&](int32_t a, int32_t b) {
    return scores[a] != scores[b] ? scores[a] > scores[b] : a < b;
  });
  pages.assign(others.begin(), others.begin() + keep);
  pages.push_back(n - 1);
  std::sort(pages.begin(), pages.end());
  return pages;
}

absl::Status SelectPages(const SelectPagesParams& p) {
  if (p.page_size <= 0 || p.max_pages <= 0 ||
      (p.selected_stride > 0 && p.selected_stride < p.max_pages)) {
    return absl::InvalidArgumentError(
        "page selection needs page_size, max_pages > 0 and rows of max_pages or more");
  }
  for (int j = 0; j < p.num_jobs; ++j) {
    const PageScoreJob& job = p.jobs[j];
    const int64_t num_pages = (p.kv_len[job.seq] + p.page_size - 1) / p.page_size;
    const std::vector<int32_t> pages =
        SelectTopPages({p.scores + job.out_offset, static_cast<size_t>(num_pages)}, p.max_pages);
    const int64_t row = p.out_rows != nullptr ? p.out_rows[j] : j;
    const int64_t stride = p.selected_stride > 0 ? p.selected_stride : p.max_pages;
    std::copy(pages.begin(), pages.end(), p.selected + row * stride);
    p.counts[row] = static_cast<int32_t>(pages.size());
  }
  return absl::OkStatus();
}

}  // namespace lserve::cpu
