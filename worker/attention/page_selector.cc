#include "worker/attention/page_selector.h"

#include <algorithm>

#include "kernels/cpu/page_score.h"

namespace lserve {

std::vector<int32_t> SelectTopPages(std::span<const float> scores, int64_t max_pages) {
  return cpu::SelectTopPages(scores, max_pages);
}

PageSelectionCache::Entry& PageSelectionCache::EntryFor(SeqId seq, int layer, int head) {
  auto& layers = selections_[seq];
  if (layers.empty()) layers.resize(num_layers_);
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
  // An import naming pages past the scored history does not belong to it: score instead.
  if (entry.has_import && !entry.imported.empty() &&
      entry.imported.back() < static_cast<int64_t>(scores.size())) {
    entry.pages = std::move(entry.imported);
  } else {
    entry.pages = SelectTopPages(scores, config_.BudgetPages());
  }
  entry.has_import = false;
  entry.computed_at = decode_step;
  ++recomputations_;
  return entry.pages;
}

void PageSelectionCache::Import(SeqId seq, int layer, int head, std::vector<int32_t> pages) {
  Entry& entry = EntryFor(seq, layer, head);
  entry.imported = std::move(pages);
  entry.has_import = true;
}

void PageSelectionCache::MarkComputed(SeqId seq, int layer, int head, int64_t decode_step) {
  EntryFor(seq, layer, head).computed_at = decode_step;
  ++recomputations_;
}

const std::vector<int32_t>& PageSelectionCache::Reuse(SeqId seq, int layer, int head,
                                                      int64_t kv_len) {
  Entry& entry = EntryFor(seq, layer, head);
  ++reuses_;
  const int64_t p = config_.page_size;
  const int32_t newest = static_cast<int32_t>((kv_len + p - 1) / p - 1);
  if (std::binary_search(entry.pages.begin(), entry.pages.end(), newest)) return entry.pages;
  entry.with_newest = entry.pages;
  entry.with_newest.push_back(newest);
  return entry.with_newest;
}

}  // namespace lserve
