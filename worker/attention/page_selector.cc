#include "worker/attention/page_selector.h"

#include <algorithm>
#include <limits>
#include <numeric>

namespace lserve {

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

PageSelectionCache::Entry& PageSelectionCache::EntryFor(SeqId seq, int layer, int head) {
  auto& layers = selections_[seq];
  if (layers.empty()) layers.resize(cache_->config().num_layers);
  auto& heads = layers[layer];
  if (static_cast<int>(heads.size()) <= head) heads.resize(head + 1);
  return heads[head];
}

bool PageSelectionCache::Due(SeqId seq, int layer, int head, int64_t decode_step) {
  const Entry& entry = EntryFor(seq, layer, head);
  return entry.computed_at < 0 || decode_step % config_.reuse_interval == 0 ||
         decode_step - entry.computed_at >= config_.reuse_interval;
}

const std::vector<int32_t>& PageSelectionCache::Update(SeqId seq, int layer, int head,
                                                       int64_t decode_step,
                                                       std::span<const float> scores) {
  Entry& entry = EntryFor(seq, layer, head);
  entry.pages = SelectTopPages(scores, config_.BudgetPages());
  entry.computed_at = decode_step;
  ++recomputations_;
  return entry.pages;
}

const std::vector<int32_t>& PageSelectionCache::Reuse(SeqId seq, int layer, int head,
                                                      int64_t kv_len) {
  Entry& entry = EntryFor(seq, layer, head);
  const int64_t p = cache_->config().page_size;
  const int32_t newest = static_cast<int32_t>((kv_len + p - 1) / p - 1);
  if (std::binary_search(entry.pages.begin(), entry.pages.end(), newest)) return entry.pages;
  entry.with_newest = entry.pages;
  entry.with_newest.push_back(newest);
  return entry.with_newest;
}

const std::vector<int32_t>& PageSelectionCache::Select(SeqId seq, int layer, int head, int slot,
                                                       int64_t kv_len, int64_t decode_step,
                                                       std::span<const float* const> queries) {
  if (!Due(seq, layer, head, decode_step)) return Reuse(seq, layer, head, kv_len);
  ScorePhysicalPages(*cache_, layer, seq, slot, kv_len, queries, &scores_);
  return Update(seq, layer, head, decode_step, scores_);
}

}  // namespace lserve
