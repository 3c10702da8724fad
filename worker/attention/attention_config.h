// Every knob of the hybrid sparse attention (DESIGN.md §3) in one validated struct.
#ifndef LSERVE_WORKER_ATTENTION_ATTENTION_CONFIG_H_
#define LSERVE_WORKER_ATTENTION_ATTENTION_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace lserve {

// Whether decode pages are scored per query head (LServe) or once per KV head, taking
// the max over the KV head's query heads (cheaper, one page list per GQA group).
enum class PageScoring { kPerQueryHead, kPerKvHead };

struct SparseAttentionConfig {
  // Static sparsity: streaming heads see sink + local window only.
  bool streaming_heads = true;
  float streaming_ratio = 0.5f;  // s: share of KV heads that stream
  std::string gate_file;         // full_attention_heads.tsv; empty: seeded choice per layer
  uint64_t head_seed = 0;
  int64_t sink = 128;
  int64_t prefill_local = 8192;
  int64_t decode_local = 256;

  // Hierarchical paging.
  int page_size = 64;          // P
  int logical_page_size = 16;  // L

  // Dynamic sparsity: decode page selection for dense heads.
  bool page_selection = true;
  int64_t token_budget = 4096;  // B
  int reuse_interval = 4;
  PageScoring scoring = PageScoring::kPerQueryHead;

  // Every sparsity off: plain causal attention over the paged cache.
  static SparseAttentionConfig Dense() {
    SparseAttentionConfig config;
    config.streaming_heads = false;
    config.page_selection = false;
    return config;
  }

  // Pages a selection keeps (the newest page included) once the history exceeds the
  // budget.
  int64_t BudgetPages() const { return token_budget / page_size; }
  // Whether a query whose sequence holds kv_len tokens reads selected pages rather than
  // every page: only in decode, and only past the budget in tokens, so a budget that is
  // not a multiple of the page size still selects everything while the history fits.
  bool SelectsPages(int64_t kv_len, bool decode) const {
    return decode && page_selection && kv_len > token_budget;
  }
};

absl::Status ValidateSparseAttentionConfig(const SparseAttentionConfig& config);
absl::Status ParsePageScoring(const std::string& text, PageScoring* scoring);
const char* PageScoringName(PageScoring scoring);

}  // namespace lserve

#endif  // LSERVE_WORKER_ATTENTION_ATTENTION_CONFIG_H_
