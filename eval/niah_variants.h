// Names for the attention configurations an NIAH sweep compares, e.g. "dense", "hybrid",
// "ratio0.25", "budget1024", "reuse8", "random3" or knobs joined by '+'
// ("ratio0.75+budget8192"). Every name but "dense" starts from the hybrid defaults
// (streaming ratio 0.5, budget 4096, reuse 4, the learned gate file).
#ifndef LSERVE_EVAL_NIAH_VARIANTS_H_
#define LSERVE_EVAL_NIAH_VARIANTS_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/attention/attention_config.h"

namespace lserve {

// `gate_file` is the learned gates; "random<seed>" drops it for a seeded choice of heads
// at the same ratio.
absl::StatusOr<SparseAttentionConfig> NiahVariant(absl::string_view name,
                                                  const std::string& gate_file);

}  // namespace lserve

#endif  // LSERVE_EVAL_NIAH_VARIANTS_H_
