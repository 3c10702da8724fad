// Independent, naive versions of hybrid sparse attention's pieces, computed from the
// contiguous keys and values a KvDriver recorded: the test oracle for the paged path.
#ifndef LSERVE_TESTS_KVSTORE_NAIVE_HYBRID_H_
#define LSERVE_TESTS_KVSTORE_NAIVE_HYBRID_H_

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "tests/kvstore/kv_test_util.h"

namespace lserve::testing {

// Softmax attention of q over the listed positions of (seq, layer, kv_head), in double.
inline std::vector<float> NaiveAttention(const KvDriver& driver, SeqId seq, int layer, int kv_head,
                                         const float* q, const std::vector<int64_t>& positions,
                                         int dim) {
  std::vector<double> scores;
  double max_score = -INFINITY;
  for (int64_t pos : positions) {
    const float* k = driver.Key(seq, layer, pos, kv_head);
    double dot = 0.0;
    for (int c = 0; c < dim; ++c) dot += double{q[c]} * k[c];
    scores.push_back(dot / std::sqrt(double(dim)));
    max_score = std::max(max_score, scores.back());
  }
  std::vector<double> out(dim, 0.0);
  double sum = 0.0;
  for (size_t i = 0; i < positions.size(); ++i) {
    const double w = std::exp(scores[i] - max_score);
    sum += w;
    const float* v = driver.Value(seq, layer, positions[i], kv_head);
    for (int c = 0; c < dim; ++c) out[c] += w * v[c];
  }
  std::vector<float> result(dim);
  for (int c = 0; c < dim; ++c) result[c] = static_cast<float>(out[c] / sum);
  return result;
}

// Positions page selection keeps, recomputed from raw keys: logical-page min/max, a
// physical page scores the max over its logical pages and over `queries`, the newest page
// plus the best others, lower index first on ties.
inline std::vector<int64_t> NaiveSelectedPositions(const KvDriver& driver, SeqId seq, int layer,
                                                   int kv_head,
                                                   const std::vector<const float*>& queries,
                                                   int64_t len, int page, int logical,
                                                   int64_t budget_pages, int dim) {
  const int64_t pages = (len + page - 1) / page;
  std::vector<double> page_score(pages, -INFINITY);
  for (int64_t first = 0; first < len; first += logical) {
    for (const float* q : queries) {
      double score = 0.0;
      for (int c = 0; c < dim; ++c) {
        float lo = INFINITY, hi = -INFINITY;
        for (int64_t pos = first; pos < std::min(len, first + logical); ++pos) {
          lo = std::min(lo, driver.Key(seq, layer, pos, kv_head)[c]);
          hi = std::max(hi, driver.Key(seq, layer, pos, kv_head)[c]);
        }
        score += std::max(q[c] * hi, q[c] * lo);
      }
      page_score[first / page] = std::max(page_score[first / page], score);
    }
  }
  std::vector<int64_t> order(pages - 1);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return page_score[a] > page_score[b]; });
  std::vector<int64_t> chosen = {pages - 1};
  for (int64_t i = 0; i < std::min<int64_t>(budget_pages - 1, pages - 1); ++i) {
    chosen.push_back(order[i]);
  }
  std::vector<int64_t> positions;
  for (int64_t p : chosen) {
    for (int64_t pos = p * page; pos < std::min(len, (p + 1) * page); ++pos) {
      positions.push_back(pos);
    }
  }
  return positions;
}

// [0, sink) and (query_pos - local, query_pos].
inline std::vector<int64_t> StreamingWindow(int64_t sink, int64_t local, int64_t query_pos) {
  std::vector<int64_t> window;
  for (int64_t j = 0; j <= query_pos; ++j) {
    if (j < sink || query_pos - j < local) window.push_back(j);
  }
  return window;
}

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_KVSTORE_NAIVE_HYBRID_H_
