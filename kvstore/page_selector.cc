#include "kvstore/page_selector.h"

#include <algorithm>
#include <limits>
#include <numeric>

namespace lserve {

float LogicalPageScore(const float* q, const float* kmax, const float* kmin, int head_dim) {
  float score = 0.0f;
  for (int c = 0; c < head_dim; ++c) score += std::max(q[c] * kmax[c], q[c] * kmin[c]);
  return score;
}

void ScorePhysicalPages(const PagedKvCache& cache, int layer, SeqId seq, int slot, int64_t kv_len,
                        std::span<const float* const> queries, std::vector<float>* scores) {
  const KvCacheConfig& config = cache.config();
  const int d = config.head_dim;
  const int64_t p = config.page_size;
  const int64_t l = config.logical_page_size;
  const int64_t logical_per_page = p / l;
  const std::vector<PageId>& table = cache.DensePageTable(seq);
  const int64_t num_pages = (kv_len + p - 1) / p;
  scores->assign(num_pages, -std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < num_pages; ++i) {
    // Only logical pages that hold tokens: later ones keep another sequence's statistics.
    const int64_t filled = std::min<int64_t>(logical_per_page, (kv_len - i * p + l - 1) / l);
    const int64_t base = table[i] * cache.StatsPageStride(layer) + slot * logical_per_page * d;
    float best = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < filled; ++j) {
      const float* kmax = cache.KeyMax(layer) + base + j * d;
      const float* kmin = cache.KeyMin(layer) + base + j * d;
      for (const float* q : queries) best = std::max(best, LogicalPageScore(q, kmax, kmin, d));
    }
    (*scores)[i] = best;
  }
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

const std::vector<int32_t>& PageSelectionCache::Select(SeqId seq, int layer, int head, int slot,
                                                       int64_t kv_len, int64_t decode_step,
                                                       std::span<const float* const> queries) {
  auto& layers = selections_[seq];
  if (layers.empty()) layers.resize(cache_->config().num_layers);
  auto& heads = layers[layer];
  if (static_cast<int>(heads.size()) <= head) heads.resize(head + 1);
  Entry& entry = heads[head];
  const int64_t p = cache_->config().page_size;
  const int64_t num_pages = (kv_len + p - 1) / p;
  const bool due = entry.computed_at < 0 || decode_step % config_.reuse_interval == 0 ||
                   decode_step - entry.computed_at >= config_.reuse_interval;
  if (due) {
    ScorePhysicalPages(*cache_, layer, seq, slot, kv_len, queries, &scores_);
    entry.pages = SelectTopPages(scores_, config_.BudgetPages());
    entry.computed_at = decode_step;
    ++recomputations_;
    return entry.pages;
  }
  // Reused selection: the newest page may have appeared since; attend it regardless.
  const int32_t newest = static_cast<int32_t>(num_pages - 1);
  if (std::binary_search(entry.pages.begin(), entry.pages.end(), newest)) return entry.pages;
  entry.with_newest = entry.pages;
  entry.with_newest.push_back(newest);
  return entry.with_newest;
}

}  // namespace lserve
