#include "eval/niah_variants.h"

#include <type_traits>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"

namespace lserve {
namespace {

// Parses the number after `prefix` in `knob` into `value`; false when knob has another prefix.
template <typename T>
absl::StatusOr<bool> KnobValue(absl::string_view knob, absl::string_view prefix, T* value) {
  if (!absl::StartsWith(knob, prefix)) return false;
  absl::string_view number = knob.substr(prefix.size());
  bool ok = false;
  if constexpr (std::is_same_v<T, float>) {
    ok = absl::SimpleAtof(number, value);
  } else {
    ok = absl::SimpleAtoi(number, value);
  }
  if (!ok)
    return absl::InvalidArgumentError(absl::StrCat("bad number in variant knob '", knob, "'"));
  return true;
}

}  // namespace

absl::StatusOr<SparseAttentionConfig> NiahVariant(absl::string_view name,
                                                  const std::string& gate_file) {
  if (name == "dense") return SparseAttentionConfig::Dense();
  SparseAttentionConfig config;
  config.gate_file = gate_file;
  for (absl::string_view knob : absl::StrSplit(name, '+')) {
    if (knob == "hybrid") continue;
    uint64_t seed = 0;
    ASSIGN_OR_RETURN(bool ratio, KnobValue(knob, "ratio", &config.streaming_ratio));
    ASSIGN_OR_RETURN(bool budget, KnobValue(knob, "budget", &config.token_budget));
    ASSIGN_OR_RETURN(bool reuse, KnobValue(knob, "reuse", &config.reuse_interval));
    ASSIGN_OR_RETURN(bool random, KnobValue(knob, "random", &seed));
    if (random) {
      config.gate_file.clear();
      config.head_seed = seed;
    }
    if (!ratio && !budget && !reuse && !random) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown variant knob '", knob,
                       "' (want dense, hybrid, ratio<s>, budget<n>, reuse<n>, random<seed>)"));
    }
  }
  RETURN_IF_ERROR(ValidateSparseAttentionConfig(config));
  return config;
}

}  // namespace lserve
