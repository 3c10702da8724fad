#include "eval/sparse_quality.h"

#include <algorithm>
#include <cmath>

#include "common/status_macros.h"
#include "kernels/cpu/sampling.h"

namespace lserve {
namespace {

absl::StatusOr<std::unique_ptr<Engine>> MakeEngine(const WeightsFactory& weights,
                                                   const SparseAttentionConfig& attention) {
  ASSIGN_OR_RETURN(ModelWeights w, weights());
  EngineOptions options;
  options.attention = attention;
  options.max_sequences = 1;
  options.max_chunk_tokens = 512;
  return Engine::Create(std::move(w), options);
}

}  // namespace

absl::StatusOr<DivergenceReport> CompareSparseToDense(const WeightsFactory& weights,
                                                      const SparseAttentionConfig& sparse,
                                                      const std::vector<int32_t>& prompt,
                                                      int decode_steps, int64_t prefill_chunk) {
  SparseAttentionConfig dense_config = SparseAttentionConfig::Dense();
  dense_config.page_size = sparse.page_size;
  dense_config.logical_page_size = sparse.logical_page_size;
  ASSIGN_OR_RETURN(auto dense, MakeEngine(weights, dense_config));
  ASSIGN_OR_RETURN(auto hybrid, MakeEngine(weights, sparse));
  RETURN_IF_ERROR(dense->AddSequence(1));
  RETURN_IF_ERROR(hybrid->AddSequence(1));
  std::vector<float> dense_logits, hybrid_logits;
  for (size_t begin = 0; begin < prompt.size(); begin += prefill_chunk) {
    const size_t end = std::min(prompt.size(), begin + static_cast<size_t>(prefill_chunk));
    StepInput input{1, std::vector<int32_t>(prompt.begin() + begin, prompt.begin() + end),
                    StepPhase::kPrefill, LogitRows::kLast};
    ASSIGN_OR_RETURN(auto d, dense->Step({input}));
    ASSIGN_OR_RETURN(auto h, hybrid->Step({input}));
    dense_logits = d[0].logits;
    hybrid_logits = h[0].logits;
  }
  DivergenceReport report;
  int agree = 0;
  for (int step = 0; step < decode_steps; ++step) {
    double max_diff = 0.0;
    for (size_t i = 0; i < dense_logits.size(); ++i) {
      max_diff = std::max(max_diff, std::abs(double{dense_logits[i]} - hybrid_logits[i]));
    }
    report.max_abs_logit_diff.push_back(max_diff);
    const int32_t token = cpu::ArgMax(dense_logits);
    agree += token == cpu::ArgMax(hybrid_logits);
    // Both engines continue with the dense greedy token, so steps stay comparable.
    StepInput input{1, {token}, StepPhase::kDecode, LogitRows::kLast};
    ASSIGN_OR_RETURN(auto d, dense->Step({input}));
    ASSIGN_OR_RETURN(auto h, hybrid->Step({input}));
    dense_logits = d[0].logits;
    hybrid_logits = h[0].logits;
  }
  report.steps = decode_steps;
  for (double diff : report.max_abs_logit_diff) {
    report.mean_max_abs_logit_diff += diff / std::max(1, decode_steps);
    report.worst_max_abs_logit_diff = std::max(report.worst_max_abs_logit_diff, diff);
  }
  report.greedy_agreement = decode_steps > 0 ? double(agree) / decode_steps : 1.0;
  report.tiles_visited = hybrid->attention_stats().tiles_visited;
  report.tiles_dense = hybrid->attention_stats().tiles_dense;
  return report;
}

}  // namespace lserve
