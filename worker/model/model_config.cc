#include "worker/model/model_config.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kernels/rope_frequencies.h"
#include "nlohmann/json.hpp"

namespace lserve {
namespace {

// Caps keep every size product below int64 range; real models are orders of magnitude
// smaller.
constexpr int64_t kMaxDimension = int64_t{1} << 24;
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxParameters = int64_t{1} << 45;

// The shortest decimal that reads back as `value`, so 1e-5f is written as 1e-05 and not as
// its exact binary expansion.
double ShortestDecimal(float value) {
  char buffer[32];
  for (int digits = 1; digits <= 9; ++digits) {
    std::snprintf(buffer, sizeof(buffer), "%.*g", digits, static_cast<double>(value));
    const double parsed = std::strtod(buffer, nullptr);
    if (static_cast<float>(parsed) == value) return parsed;
  }
  return value;
}

absl::Status InvalidConfig(absl::string_view what) { return absl::InvalidArgumentError(what); }

// The spec the runtime builds from a config, so validation sees the very float32 values
// the engine will rotate with.
RopeSpec RopeSpecFor(const ModelConfig& c, bool scaled) {
  RopeSpec spec;
  spec.head_dim = c.head_dim;
  spec.theta = c.rope_theta;
  spec.factor = c.rope_scaling.factor;
  spec.low_freq_factor = c.rope_scaling.low_freq_factor;
  spec.high_freq_factor = c.rope_scaling.high_freq_factor;
  spec.original_max_position_embeddings = c.rope_scaling.original_max_position_embeddings;
  spec.kind = !scaled || c.rope_scaling.type == RopeScalingType::kNone ? RopeKind::kDefault
              : c.rope_scaling.type == RopeScalingType::kLinear        ? RopeKind::kLinear
                                                                       : RopeKind::kLlama3;
  return spec;
}

// The first inverse frequency that is not finite and positive, or the first whose angle
// overflows within the context window; -1 when all are usable. Either way every rotated
// query and key would turn into NaN or lose its position.
int FirstUnusableFrequency(const std::vector<float>& inv_freq, int max_positions) {
  const float last_position = static_cast<float>(max_positions - 1);
  for (size_t i = 0; i < inv_freq.size(); ++i) {
    const float f = inv_freq[i];
    if (!(f > 0.0f) || !std::isfinite(f) || !std::isfinite(last_position * f)) {
      return static_cast<int>(i);
    }
  }
  return -1;
}

// Parameters can each be finite and positive yet still yield unusable frequencies, e.g. a
// linear factor of 1e-45 or a rope_theta of 1e-45; blames theta when the unscaled
// frequencies already fail, the scaling otherwise.
absl::Status ValidateRopeFrequencies(const ModelConfig& c) {
  const std::vector<float> scaled = RopeInverseFrequencies(RopeSpecFor(c, true));
  const int bad = FirstUnusableFrequency(scaled, c.max_position_embeddings);
  if (bad < 0) return absl::OkStatus();
  const std::vector<float> plain = RopeInverseFrequencies(RopeSpecFor(c, false));
  const int plain_bad = FirstUnusableFrequency(plain, c.max_position_embeddings);
  const int index = plain_bad >= 0 ? plain_bad : bad;
  const float value = plain_bad >= 0 ? plain[index] : scaled[index];
  std::string problem =
      absl::StrCat("rotary inverse frequency ", index, " of ", scaled.size(), " to ", value);
  if (value > 0.0f && std::isfinite(value)) {
    absl::StrAppend(&problem, ", whose angle at position ", c.max_position_embeddings - 1,
                    " overflows float32");
  } else {
    absl::StrAppend(&problem, "; inverse frequencies must be finite and positive");
  }
  if (plain_bad >= 0) {
    return InvalidConfig(absl::StrCat("'rope_theta' ", c.rope_theta, " with 'head_dim' ",
                                      c.head_dim, " sets ", problem));
  }
  const RopeScaling& rope = c.rope_scaling;
  if (rope.type == RopeScalingType::kLinear) {
    return InvalidConfig(absl::StrCat("rope scaling 'factor' ", rope.factor, " sets ", problem));
  }
  return InvalidConfig(absl::StrCat(
      "llama3 rope scaling ('factor' ", rope.factor, ", 'low_freq_factor' ", rope.low_freq_factor,
      ", 'high_freq_factor' ", rope.high_freq_factor, ", 'original_max_position_embeddings' ",
      rope.original_max_position_embeddings, ") sets ", problem));
}

}  // namespace

int64_t ModelConfig::NumParameters() const {
  using Wide = __int128;
  const Wide hidden = hidden_size;
  const Wide q_width = Wide{num_heads} * head_dim;
  const Wide kv_width = Wide{num_kv_heads} * head_dim;
  Wide per_layer = 2 * hidden;                                // two RMSNorms
  per_layer += 2 * q_width * hidden + 2 * kv_width * hidden;  // q, o and k, v projections
  per_layer += 3 * hidden * intermediate_size;                // gate, up, down
  if (qkv_bias) per_layer += q_width + 2 * kv_width;
  if (o_bias) per_layer += hidden;
  Wide total = Wide{vocab_size} * hidden * (tie_word_embeddings ? 1 : 2) + hidden;
  total += per_layer * num_layers;
  const Wide limit = std::numeric_limits<int64_t>::max();
  return static_cast<int64_t>(total > limit ? limit : total);
}

absl::Status ValidateModelConfig(const ModelConfig& c) {
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2") {
    return InvalidConfig(
        absl::StrCat("'model_type' '", c.model_type, "' is not supported (llama, mistral, qwen2)"));
  }
  const std::pair<const char*, int> sizes[] = {{"hidden_size", c.hidden_size},
                                               {"intermediate_size", c.intermediate_size},
                                               {"num_attention_heads", c.num_heads},
                                               {"num_key_value_heads", c.num_kv_heads},
                                               {"head_dim", c.head_dim},
                                               {"vocab_size", c.vocab_size}};
  for (const auto& [key, value] : sizes) {
    if (value <= 0 || value > kMaxDimension) {
      return InvalidConfig(
          absl::StrCat("'", key, "' must be in [1, ", kMaxDimension, "], got ", value));
    }
  }
  if (c.num_layers <= 0 || c.num_layers > kMaxLayers) {
    return InvalidConfig(
        absl::StrCat("'num_hidden_layers' must be in [1, ", kMaxLayers, "], got ", c.num_layers));
  }
  if (c.max_position_embeddings <= 0) {
    return InvalidConfig(absl::StrCat("'max_position_embeddings' must be positive, got ",
                                      c.max_position_embeddings));
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return InvalidConfig(absl::StrCat("'num_key_value_heads' (", c.num_kv_heads,
                                      ") must divide 'num_attention_heads' (", c.num_heads, ")"));
  }
  if (c.head_dim % 2 != 0) {
    return InvalidConfig(
        absl::StrCat("'head_dim' must be even for rotary embeddings, got ", c.head_dim));
  }
  if (!(c.rms_norm_eps > 0.0f) || !std::isfinite(c.rms_norm_eps)) {
    return InvalidConfig(absl::StrCat("'rms_norm_eps' must be positive, got ", c.rms_norm_eps));
  }
  if (!(c.rope_theta > 0.0f) || !std::isfinite(c.rope_theta)) {
    return InvalidConfig(absl::StrCat("'rope_theta' must be positive, got ", c.rope_theta));
  }
  const RopeScaling& rope = c.rope_scaling;
  switch (rope.type) {
    case RopeScalingType::kNone:
      break;
    case RopeScalingType::kLlama3:
      if (!(rope.low_freq_factor > 0.0f) || !(rope.high_freq_factor > rope.low_freq_factor) ||
          !std::isfinite(rope.high_freq_factor)) {
        return InvalidConfig(absl::StrCat("rope scaling 'low_freq_factor' (", rope.low_freq_factor,
                                          ") must be positive and below 'high_freq_factor' (",
                                          rope.high_freq_factor, ")"));
      }
      if (rope.original_max_position_embeddings <= 0) {
        return InvalidConfig("rope scaling 'original_max_position_embeddings' must be positive");
      }
      [[fallthrough]];
    case RopeScalingType::kLinear:
      if (!(rope.factor > 0.0f) || !std::isfinite(rope.factor)) {
        return InvalidConfig(
            absl::StrCat("rope scaling 'factor' must be positive, got ", rope.factor));
      }
      break;
    default:
      return InvalidConfig("rope scaling type is not one of default, linear, llama3");
  }
  if (c.hidden_act != "silu") {
    return InvalidConfig(absl::StrCat("'hidden_act' '", c.hidden_act, "' is not supported (silu)"));
  }
  // Only bias layouts that transformers can express for the family are accepted, so that
  // every config round-trips through config.json.
  if (c.model_type == "qwen2" && (!c.qkv_bias || c.o_bias)) {
    return InvalidConfig("qwen2 has q/k/v biases and no o_proj bias");
  }
  if (c.model_type == "mistral" && (c.qkv_bias || c.o_bias)) {
    return InvalidConfig("mistral has no attention biases");
  }
  if (c.model_type == "llama" && c.qkv_bias != c.o_bias) {
    return InvalidConfig("llama 'attention_bias' covers q/k/v and o_proj together");
  }
  if (c.sliding_window < 0) return InvalidConfig("'sliding_window' must not be negative");
  if (c.bos_token_id < -1 || c.bos_token_id >= c.vocab_size) {
    return InvalidConfig(
        absl::StrCat("'bos_token_id' ", c.bos_token_id, " is outside [0, ", c.vocab_size, ")"));
  }
  for (int id : c.eos_token_ids) {
    if (id < 0 || id >= c.vocab_size) {
      return InvalidConfig(
          absl::StrCat("'eos_token_id' ", id, " is outside [0, ", c.vocab_size, ")"));
    }
  }
  if (c.dtype != "float32" && c.dtype != "float16" && c.dtype != "bfloat16") {
    return InvalidConfig(absl::StrCat("'torch_dtype' '", c.dtype, "' is not supported"));
  }
  if (c.NumParameters() > kMaxParameters) {
    return InvalidConfig(absl::StrCat("the model has ", c.NumParameters(),
                                      " parameters, more than the supported ", kMaxParameters));
  }
  // Last: head_dim is known to be positive and even, which the computation relies on.
  return ValidateRopeFrequencies(c);
}

std::string ModelConfigToJson(const ModelConfig& c) {
  nlohmann::ordered_json j;
  const bool is_qwen2 = c.model_type == "qwen2";
  const bool is_mistral = c.model_type == "mistral";
  j["architectures"] = {is_qwen2     ? "Qwen2ForCausalLM"
                        : is_mistral ? "MistralForCausalLM"
                                     : "LlamaForCausalLM"};
  j["model_type"] = c.model_type;
  j["hidden_size"] = c.hidden_size;
  j["intermediate_size"] = c.intermediate_size;
  j["num_hidden_layers"] = c.num_layers;
  j["num_attention_heads"] = c.num_heads;
  j["num_key_value_heads"] = c.num_kv_heads;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.vocab_size;
  j["max_position_embeddings"] = c.max_position_embeddings;
  j["rms_norm_eps"] = ShortestDecimal(c.rms_norm_eps);
  j["rope_theta"] = ShortestDecimal(c.rope_theta);
  const RopeScaling& rope = c.rope_scaling;
  if (rope.type == RopeScalingType::kNone) {
    j["rope_scaling"] = nullptr;
  } else {
    nlohmann::ordered_json scaling;
    // Older transformers releases read "type"; newer ones read "rope_type".
    const char* name = rope.type == RopeScalingType::kLinear ? "linear" : "llama3";
    scaling["rope_type"] = name;
    scaling["type"] = name;
    scaling["factor"] = ShortestDecimal(rope.factor);
    if (rope.type == RopeScalingType::kLlama3) {
      scaling["low_freq_factor"] = ShortestDecimal(rope.low_freq_factor);
      scaling["high_freq_factor"] = ShortestDecimal(rope.high_freq_factor);
      scaling["original_max_position_embeddings"] = rope.original_max_position_embeddings;
    }
    j["rope_scaling"] = scaling;
  }
  j["hidden_act"] = c.hidden_act;
  j["tie_word_embeddings"] = c.tie_word_embeddings;
  if (c.model_type == "llama") {
    j["attention_bias"] = c.qkv_bias;
    j["mlp_bias"] = false;
  }
  if (is_mistral) {
    j["sliding_window"] = c.sliding_window > 0 ? nlohmann::ordered_json(c.sliding_window)
                                               : nlohmann::ordered_json(nullptr);
  }
  if (is_qwen2) {
    j["use_sliding_window"] = c.sliding_window > 0;
    j["sliding_window"] = c.sliding_window > 0 ? nlohmann::ordered_json(c.sliding_window)
                                               : nlohmann::ordered_json(nullptr);
    j["max_window_layers"] = c.num_layers;
  }
  j["attention_dropout"] = 0.0;
  j["initializer_range"] = 0.02;
  j["use_cache"] = true;
  j["bos_token_id"] = c.bos_token_id >= 0 ? nlohmann::ordered_json(c.bos_token_id)
                                          : nlohmann::ordered_json(nullptr);
  if (c.eos_token_ids.empty()) {
    j["eos_token_id"] = nullptr;
  } else if (c.eos_token_ids.size() == 1) {
    j["eos_token_id"] = c.eos_token_ids[0];
  } else {
    j["eos_token_id"] = c.eos_token_ids;
  }
  j["torch_dtype"] = c.dtype;
  return j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

}  // namespace lserve
