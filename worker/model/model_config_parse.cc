// ParseModelConfig and LoadModelConfig, declared in model_config.h.
#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/model/model_config.h"

namespace lserve {
namespace {

using Json = nlohmann::json;

const char* JsonTypeName(const Json& value) { return value.type_name(); }

// Reads typed values from one JSON object, reporting errors as "<source>: '<key>' ...".
class KeyReader {
 public:
  KeyReader(const Json& object, absl::string_view source, std::string prefix = "")
      : object_(object), source_(source), prefix_(std::move(prefix)) {}

  absl::Status Error(absl::string_view key, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": '", prefix_, key, "' ", what));
  }

  // Null counts as absent, as transformers writes null for unset optional fields.
  const Json* Find(absl::string_view key) const {
    auto it = object_.find(std::string_view(key.data(), key.size()));
    if (it == object_.end() || it->is_null()) return nullptr;
    return &*it;
  }

  absl::StatusOr<std::optional<int>> OptionalInt(absl::string_view key) const {
    const Json* value = Find(key);
    if (value == nullptr) return std::optional<int>();
    return ToInt(key, *value);
  }

  absl::StatusOr<int> RequiredInt(absl::string_view key) const {
    ASSIGN_OR_RETURN(std::optional<int> value, OptionalInt(key));
    if (!value.has_value()) return Error(key, "is missing");
    return *value;
  }

  absl::StatusOr<std::optional<double>> OptionalNumber(absl::string_view key) const {
    const Json* value = Find(key);
    if (value == nullptr) return std::optional<double>();
    if (!value->is_number()) {
      return Error(key, absl::StrCat("must be a number, got ", JsonTypeName(*value)));
    }
    const double number = value->get<double>();
    if (!std::isfinite(number) || std::fabs(number) > std::numeric_limits<float>::max()) {
      return Error(key, "must be a finite float32 value");
    }
    return number;
  }

  absl::StatusOr<double> RequiredNumber(absl::string_view key) const {
    ASSIGN_OR_RETURN(std::optional<double> value, OptionalNumber(key));
    if (!value.has_value()) return Error(key, "is missing");
    return *value;
  }

  absl::StatusOr<std::optional<bool>> OptionalBool(absl::string_view key) const {
    const Json* value = Find(key);
    if (value == nullptr) return std::optional<bool>();
    if (!value->is_boolean()) {
      return Error(key, absl::StrCat("must be a boolean, got ", JsonTypeName(*value)));
    }
    return value->get<bool>();
  }

  absl::StatusOr<std::optional<std::string>> OptionalString(absl::string_view key) const {
    const Json* value = Find(key);
    if (value == nullptr) return std::optional<std::string>();
    if (!value->is_string()) {
      return Error(key, absl::StrCat("must be a string, got ", JsonTypeName(*value)));
    }
    return value->get<std::string>();
  }

  absl::StatusOr<int> ToInt(absl::string_view key, const Json& value) const {
    if (value.is_number_unsigned()) {
      if (value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int>::max())) {
        return Error(key, "is out of range");
      }
      return static_cast<int>(value.get<uint64_t>());
    }
    if (value.is_number_integer()) {
      const int64_t number = value.get<int64_t>();
      if (number < std::numeric_limits<int>::min() || number > std::numeric_limits<int>::max()) {
        return Error(key, "is out of range");
      }
      return static_cast<int>(number);
    }
    return Error(key, absl::StrCat("must be an integer, got ", JsonTypeName(value)));
  }

 private:
  const Json& object_;
  absl::string_view source_;
  std::string prefix_;
};

absl::StatusOr<std::string> ModelTypeFromArchitectures(const KeyReader& reader) {
  const Json* architectures = reader.Find("architectures");
  if (architectures == nullptr) {
    return reader.Error("model_type", "is missing and there is no 'architectures' to infer it");
  }
  if (!architectures->is_array()) return reader.Error("architectures", "must be a list");
  for (const Json& name : *architectures) {
    if (!name.is_string()) return reader.Error("architectures", "must be a list of strings");
    const std::string& arch = name.get_ref<const std::string&>();
    if (arch == "LlamaForCausalLM") return std::string("llama");
    if (arch == "MistralForCausalLM") return std::string("mistral");
    if (arch == "Qwen2ForCausalLM") return std::string("qwen2");
  }
  return reader.Error("architectures",
                      "names no supported architecture (LlamaForCausalLM, "
                      "MistralForCausalLM, Qwen2ForCausalLM)");
}

// Reads rope_theta and scaling from either transformers v5 `rope_parameters` or v4
// `rope_theta` + `rope_scaling`.
absl::Status ParseRope(const KeyReader& top, absl::string_view source, ModelConfig& config) {
  ASSIGN_OR_RETURN(std::optional<double> theta, top.OptionalNumber("rope_theta"));
  const char* params_key = "rope_parameters";
  const Json* params = top.Find(params_key);
  if (params == nullptr) {
    params_key = "rope_scaling";
    params = top.Find(params_key);
  }
  config.rope_theta = static_cast<float>(theta.value_or(10000.0));
  config.rope_scaling = RopeScaling();
  if (params == nullptr) return absl::OkStatus();
  if (!params->is_object()) return top.Error(params_key, "must be an object or null");

  const KeyReader reader(*params, source, absl::StrCat(params_key, "."));
  ASSIGN_OR_RETURN(std::optional<double> nested_theta, reader.OptionalNumber("rope_theta"));
  if (nested_theta.has_value()) config.rope_theta = static_cast<float>(*nested_theta);

  ASSIGN_OR_RETURN(std::optional<std::string> type, reader.OptionalString("rope_type"));
  if (!type.has_value()) {
    ASSIGN_OR_RETURN(type, reader.OptionalString("type"));
  }
  if (!type.has_value()) {
    // v5 always names the type; a v4 rope_scaling without one is malformed.
    if (absl::string_view(params_key) == "rope_parameters") return absl::OkStatus();
    return reader.Error("rope_type", "is missing");
  }
  RopeScaling& scaling = config.rope_scaling;
  if (*type == "default") return absl::OkStatus();
  if (*type == "linear") {
    scaling.type = RopeScalingType::kLinear;
    ASSIGN_OR_RETURN(double factor, reader.RequiredNumber("factor"));
    scaling.factor = static_cast<float>(factor);
    return absl::OkStatus();
  }
  if (*type == "llama3") {
    scaling.type = RopeScalingType::kLlama3;
    ASSIGN_OR_RETURN(double factor, reader.RequiredNumber("factor"));
    ASSIGN_OR_RETURN(double low, reader.RequiredNumber("low_freq_factor"));
    ASSIGN_OR_RETURN(double high, reader.RequiredNumber("high_freq_factor"));
    ASSIGN_OR_RETURN(scaling.original_max_position_embeddings,
                     reader.RequiredInt("original_max_position_embeddings"));
    scaling.factor = static_cast<float>(factor);
    scaling.low_freq_factor = static_cast<float>(low);
    scaling.high_freq_factor = static_cast<float>(high);
    return absl::OkStatus();
  }
  return reader.Error("rope_type",
                      absl::StrCat("'", *type, "' is not supported (default, linear, llama3)"));
}

absl::Status ParseTokenIds(const KeyReader& reader, ModelConfig& config) {
  ASSIGN_OR_RETURN(std::optional<int> bos, reader.OptionalInt("bos_token_id"));
  config.bos_token_id = bos.value_or(-1);
  config.eos_token_ids.clear();
  const Json* eos = reader.Find("eos_token_id");
  if (eos == nullptr) return absl::OkStatus();
  if (eos->is_array()) {
    for (const Json& id : *eos) {
      ASSIGN_OR_RETURN(int value, reader.ToInt("eos_token_id", id));
      config.eos_token_ids.push_back(value);
    }
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(int value, reader.ToInt("eos_token_id", *eos));
  config.eos_token_ids.push_back(value);
  return absl::OkStatus();
}

absl::Status ParseDtype(const KeyReader& reader, ModelConfig& config) {
  const char* key = "dtype";
  ASSIGN_OR_RETURN(std::optional<std::string> dtype, reader.OptionalString(key));
  if (!dtype.has_value()) {
    key = "torch_dtype";
    ASSIGN_OR_RETURN(dtype, reader.OptionalString(key));
  }
  if (!dtype.has_value()) {
    config.dtype = "float32";
    return absl::OkStatus();
  }
  if (*dtype == "float32" || *dtype == "float" || *dtype == "fp32") {
    config.dtype = "float32";
  } else if (*dtype == "float16" || *dtype == "half" || *dtype == "fp16") {
    config.dtype = "float16";
  } else if (*dtype == "bfloat16" || *dtype == "bf16") {
    config.dtype = "bfloat16";
  } else {
    return reader.Error(
        key, absl::StrCat("'", *dtype, "' is not supported (float32, float16, bfloat16)"));
  }
  return absl::OkStatus();
}

absl::Status ParseBiasAndWindow(const KeyReader& reader, ModelConfig& config) {
  config.qkv_bias = false;
  config.o_bias = false;
  config.sliding_window = 0;
  if (config.model_type == "qwen2") {
    config.qkv_bias = true;
    ASSIGN_OR_RETURN(std::optional<bool> use_window, reader.OptionalBool("use_sliding_window"));
    if (use_window.value_or(false)) {
      ASSIGN_OR_RETURN(std::optional<int> window, reader.OptionalInt("sliding_window"));
      config.sliding_window = window.value_or(0);
    }
  } else if (config.model_type == "mistral") {
    ASSIGN_OR_RETURN(std::optional<int> window, reader.OptionalInt("sliding_window"));
    config.sliding_window = window.value_or(0);
  } else {
    ASSIGN_OR_RETURN(std::optional<bool> attention_bias, reader.OptionalBool("attention_bias"));
    config.qkv_bias = config.o_bias = attention_bias.value_or(false);
    ASSIGN_OR_RETURN(std::optional<bool> mlp_bias, reader.OptionalBool("mlp_bias"));
    if (mlp_bias.value_or(false)) return reader.Error("mlp_bias", "true is not supported");
  }
  if (config.sliding_window < 0) return reader.Error("sliding_window", "must not be negative");
  return absl::OkStatus();
}

int DefaultMaxPositions(const std::string& model_type) {
  if (model_type == "mistral") return 4096 * 32;
  if (model_type == "qwen2") return 32768;
  return 2048;
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text,
                                             std::string_view source_view) {
  const std::string source_name(source_view);
  Json root;
  try {
    root = Json::parse(json_text.begin(), json_text.end());
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source_name, ": not valid JSON (", e.what(), ")"));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source_name, ": the top level must be a JSON object, got ", JsonTypeName(root)));
  }
  const KeyReader reader(root, source_name);
  ModelConfig config;
  ASSIGN_OR_RETURN(std::optional<std::string> model_type, reader.OptionalString("model_type"));
  if (model_type.has_value()) {
    config.model_type = *model_type;
  } else {
    ASSIGN_OR_RETURN(config.model_type, ModelTypeFromArchitectures(reader));
  }
  if (config.model_type != "llama" && config.model_type != "mistral" &&
      config.model_type != "qwen2") {
    return reader.Error("model_type", absl::StrCat("'", config.model_type,
                                                   "' is not supported (llama, mistral, qwen2)"));
  }
  ASSIGN_OR_RETURN(config.hidden_size, reader.RequiredInt("hidden_size"));
  ASSIGN_OR_RETURN(config.intermediate_size, reader.RequiredInt("intermediate_size"));
  ASSIGN_OR_RETURN(config.num_layers, reader.RequiredInt("num_hidden_layers"));
  ASSIGN_OR_RETURN(config.num_heads, reader.RequiredInt("num_attention_heads"));
  ASSIGN_OR_RETURN(config.vocab_size, reader.RequiredInt("vocab_size"));
  if (config.num_heads <= 0) return reader.Error("num_attention_heads", "must be positive");
  ASSIGN_OR_RETURN(std::optional<int> kv_heads, reader.OptionalInt("num_key_value_heads"));
  config.num_kv_heads = kv_heads.value_or(config.num_heads);
  ASSIGN_OR_RETURN(std::optional<int> head_dim, reader.OptionalInt("head_dim"));
  if (head_dim.has_value()) {
    config.head_dim = *head_dim;
  } else if (config.hidden_size % config.num_heads != 0) {
    return reader.Error("num_attention_heads",
                        absl::StrCat("(", config.num_heads, ") must divide 'hidden_size' (",
                                     config.hidden_size, ") when 'head_dim' is not given"));
  } else {
    config.head_dim = config.hidden_size / config.num_heads;
  }
  ASSIGN_OR_RETURN(std::optional<int> max_positions, reader.OptionalInt("max_position_embeddings"));
  config.max_position_embeddings = max_positions.value_or(DefaultMaxPositions(config.model_type));
  ASSIGN_OR_RETURN(std::optional<double> eps, reader.OptionalNumber("rms_norm_eps"));
  config.rms_norm_eps = static_cast<float>(eps.value_or(1e-6));
  RETURN_IF_ERROR(ParseRope(reader, source_name, config));
  ASSIGN_OR_RETURN(std::optional<bool> tied, reader.OptionalBool("tie_word_embeddings"));
  config.tie_word_embeddings = tied.value_or(false);
  RETURN_IF_ERROR(ParseBiasAndWindow(reader, config));
  ASSIGN_OR_RETURN(std::optional<std::string> act, reader.OptionalString("hidden_act"));
  config.hidden_act = act.value_or("silu");
  if (config.hidden_act == "swish") config.hidden_act = "silu";  // the same function
  RETURN_IF_ERROR(ParseTokenIds(reader, config));
  RETURN_IF_ERROR(ParseDtype(reader, config));

  if (absl::Status status = ValidateModelConfig(config); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source_name, ": ", status.message()));
  }
  return config;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& config_json_path) {
  std::ifstream in(config_json_path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("cannot open model config ", config_json_path.string()));
  }
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat("error reading ", config_json_path.string()));
  }
  return ParseModelConfig(text.str(), config_json_path.string());
}
}  // namespace lserve
