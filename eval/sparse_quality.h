// How far hybrid sparse attention moves a model's outputs from dense attention: both run
// the same token stream (teacher-forced on the dense greedy ids) and every decode step's
// logits are compared.
#ifndef LSERVE_EVAL_SPARSE_QUALITY_H_
#define LSERVE_EVAL_SPARSE_QUALITY_H_

#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine.h"

namespace lserve {

struct DivergenceReport {
  int steps = 0;
  std::vector<double> max_abs_logit_diff;  // per decode step
  double mean_max_abs_logit_diff = 0.0;
  double worst_max_abs_logit_diff = 0.0;
  double greedy_agreement = 0.0;  // share of steps whose argmax matches dense
  int64_t tiles_visited = 0;      // sparse engine's attention tiles
  int64_t tiles_dense = 0;        // what dense causal attention visits
};

using WeightsFactory = std::function<absl::StatusOr<ModelWeights>()>;

absl::StatusOr<DivergenceReport> CompareSparseToDense(const WeightsFactory& weights,
                                                      const SparseAttentionConfig& sparse,
                                                      const std::vector<int32_t>& prompt,
                                                      int decode_steps, int64_t prefill_chunk);

}  // namespace lserve

#endif  // LSERVE_EVAL_SPARSE_QUALITY_H_
