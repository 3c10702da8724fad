// Attention-level retrieval check of decode page selection: a long synthetic key history
// with "needle" keys aligned to the query; does the selector keep every needle's page at
// the token budget, and how far is sparse attention from dense?
#ifndef LSERVE_EVAL_NEEDLE_RETRIEVAL_H_
#define LSERVE_EVAL_NEEDLE_RETRIEVAL_H_

#include <cstdint>

#include "common/thread_pool.h"

namespace lserve {

struct NeedleTrialConfig {
  int64_t context = 16384;
  int num_needles = 4;
  // Needle strength: q.k_needle / sqrt(head_dim); ordinary keys score ~N(0, 1) on that scale.
  float needle_logit = 16.0f;
  int head_dim = 128;
  int page_size = 64;
  int logical_page_size = 16;
  int64_t token_budget = 4096;
};

struct NeedleTrialResult {
  int needles_kept = 0;
  int num_needles = 0;
  int64_t pages_selected = 0;
  int64_t pages_total = 0;
  double output_relative_error = 0.0;  // ||sparse - dense|| / ||dense||
};

NeedleTrialResult RunNeedleTrial(const NeedleTrialConfig& config, uint64_t seed, ThreadPool* pool);

}  // namespace lserve

#endif  // LSERVE_EVAL_NEEDLE_RETRIEVAL_H_
