// Model hyperparameters read from a Hugging Face config.json (Llama, Mistral, Qwen2).
#ifndef LSERVE_WORKER_MODEL_MODEL_CONFIG_H_
#define LSERVE_WORKER_MODEL_MODEL_CONFIG_H_

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lserve {

enum class RopeScalingType { kNone, kLinear, kLlama3 };

// Field meanings follow transformers' rope_scaling / rope_parameters. Only `factor` is used
// by kLinear; the frequency factors and original length are used by kLlama3.
struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string model_type = "llama";  // llama | mistral | qwen2
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  int max_position_embeddings = 0;
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  // Qwen2 always has q/k/v biases; Llama has them (and an o_proj bias) with
  // "attention_bias": true.
  bool qkv_bias = false;
  bool o_bias = false;
  // Recorded from Mistral/Qwen2 configs for reporting; 0 means none. The engine attends
  // over the full history regardless.
  int sliding_window = 0;
  std::string hidden_act = "silu";
  int bos_token_id = -1;  // -1: none
  std::vector<int> eos_token_ids;
  std::string dtype = "float32";  // informational: float32 | float16 | bfloat16

  // Total weights: embeddings, lm_head when untied, every layer and the final norm.
  int64_t NumParameters() const;
};

// Parses config.json text in transformers v4 style (rope_theta, rope_scaling, torch_dtype)
// or v5 style (rope_parameters, dtype) and validates it. Errors are InvalidArgument and
// name `source_name` and the offending key.
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text,
                                             std::string_view source_name);

// Reads and parses a config.json file; NotFound when it cannot be read.
absl::StatusOr<ModelConfig> LoadModelConfig(const std::filesystem::path& config_json_path);

// Checks the invariants the runtime relies on (sizes positive, GQA grouping, even head_dim,
// supported model type, activation, rope type and bias layout).
absl::Status ValidateModelConfig(const ModelConfig& config);

// config.json text in transformers v4 style, which transformers v5 also reads.
std::string ModelConfigToJson(const ModelConfig& config);

}  // namespace lserve

#endif  // LSERVE_WORKER_MODEL_MODEL_CONFIG_H_
