#include "worker/model/model_config.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/worker/model/test_files.h"
#include "worker/model/synthetic_model.h"

namespace lserve {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr char kSource[] = "/models/test/config.json";

// Llama-3.1-8B's config.json as written by transformers v4.
constexpr char kLlama31V4[] = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama",
  "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
  "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})";

// A small Qwen2 config (Qwen2-0.5B shape, shortened vocab).
constexpr char kQwen2[] = R"({
  "architectures": ["Qwen2ForCausalLM"], "bos_token_id": 151643, "eos_token_id": 151643,
  "hidden_act": "silu", "hidden_size": 896, "intermediate_size": 4864,
  "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
  "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "use_sliding_window": false,
  "vocab_size": 151936})";

// Minimal llama config; tests patch keys into it.
nlohmann::json BaseConfig() {
  return nlohmann::json::parse(R"({"model_type": "llama", "hidden_size": 64,
    "intermediate_size": 172, "num_hidden_layers": 2, "num_attention_heads": 8,
    "num_key_value_heads": 4, "vocab_size": 512, "max_position_embeddings": 512})");
}

absl::StatusOr<ModelConfig> Parse(const nlohmann::json& json) {
  return ParseModelConfig(json.dump(), kSource);
}

void ExpectInvalid(const absl::StatusOr<ModelConfig>& result, const std::string& key) {
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), AllOf(HasSubstr(kSource), HasSubstr(key)));
}

void ExpectSameConfig(const ModelConfig& a, const ModelConfig& b) {
  EXPECT_EQ(a.model_type, b.model_type);
  EXPECT_EQ(a.hidden_size, b.hidden_size);
  EXPECT_EQ(a.intermediate_size, b.intermediate_size);
  EXPECT_EQ(a.num_layers, b.num_layers);
  EXPECT_EQ(a.num_heads, b.num_heads);
  EXPECT_EQ(a.num_kv_heads, b.num_kv_heads);
  EXPECT_EQ(a.head_dim, b.head_dim);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
  EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
  EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
  EXPECT_EQ(a.rope_theta, b.rope_theta);
  EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
  EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
  EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
  EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
  EXPECT_EQ(a.rope_scaling.original_max_position_embeddings,
            b.rope_scaling.original_max_position_embeddings);
  EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
  EXPECT_EQ(a.qkv_bias, b.qkv_bias);
  EXPECT_EQ(a.o_bias, b.o_bias);
  EXPECT_EQ(a.sliding_window, b.sliding_window);
  EXPECT_EQ(a.bos_token_id, b.bos_token_id);
  EXPECT_EQ(a.eos_token_ids, b.eos_token_ids);
  EXPECT_EQ(a.dtype, b.dtype);
}

TEST(ModelConfigTest, LoadsStories260KConfig) {
  absl::StatusOr<ModelConfig> config =
      LoadModelConfig(LSERVE_SHARED_DIR "/models/stories260K/config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_type, "llama");
  EXPECT_EQ(config->hidden_size, 64);
  EXPECT_EQ(config->num_layers, 5);
  EXPECT_EQ(config->num_heads, 8);
  EXPECT_EQ(config->num_kv_heads, 4);
  EXPECT_EQ(config->head_dim, 8);
  EXPECT_EQ(config->intermediate_size, 172);
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_EQ(config->bos_token_id, 1);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2));
  // Matches the element count of the checkpoint's tensors.
  EXPECT_EQ(config->NumParameters(), 260032);
}

TEST(ModelConfigTest, ParsesTransformersV4Llama3RopeScaling) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(kLlama31V4, kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->rope_theta, 500000.0f);
  EXPECT_EQ(config->rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(config->rope_scaling.factor, 8.0f);
  EXPECT_EQ(config->rope_scaling.low_freq_factor, 1.0f);
  EXPECT_EQ(config->rope_scaling.high_freq_factor, 4.0f);
  EXPECT_EQ(config->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(128001, 128008, 128009));
  EXPECT_EQ(config->dtype, "bfloat16");
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_FALSE(config->qkv_bias);
  ExpectSameConfig(*config, Llama3_8BConfig());
}

TEST(ModelConfigTest, ParsesTransformersV5RopeParameters) {
  nlohmann::json json = BaseConfig();
  json["rope_parameters"] = {{"rope_type", "llama3"},   {"rope_theta", 500000.0},
                             {"factor", 32.0},          {"low_freq_factor", 1.0},
                             {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  json["dtype"] = "float16";
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->rope_theta, 500000.0f);
  EXPECT_EQ(config->rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(config->rope_scaling.factor, 32.0f);
  EXPECT_EQ(config->dtype, "float16");
}

TEST(ModelConfigTest, V5DefaultRopeParametersMeanNoScaling) {
  nlohmann::json json = BaseConfig();
  json["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 1000000.0}};
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->rope_theta, 1000000.0f);
  EXPECT_EQ(config->rope_scaling.type, RopeScalingType::kNone);
}

TEST(ModelConfigTest, ParsesLinearScalingWithLegacyTypeKey) {
  nlohmann::json json = BaseConfig();
  json["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->rope_scaling.type, RopeScalingType::kLinear);
  EXPECT_EQ(config->rope_scaling.factor, 4.0f);
  EXPECT_EQ(config->rope_theta, 10000.0f);  // transformers' default
}

TEST(ModelConfigTest, NullRopeScalingMeansNone) {
  nlohmann::json json = BaseConfig();
  json["rope_scaling"] = nullptr;
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->rope_scaling.type, RopeScalingType::kNone);
}

TEST(ModelConfigTest, Qwen2HasQkvBiasWithoutOutputBias) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(kQwen2, kSource);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_type, "qwen2");
  EXPECT_TRUE(config->qkv_bias);
  EXPECT_FALSE(config->o_bias);
  EXPECT_TRUE(config->tie_word_embeddings);
  EXPECT_EQ(config->head_dim, 64);
  EXPECT_EQ(config->sliding_window, 0);  // use_sliding_window is false
  EXPECT_EQ(config->rms_norm_eps, 1e-6f);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(151643));
}

TEST(ModelConfigTest, LlamaAttentionBiasEnablesAllFourBiases) {
  nlohmann::json json = BaseConfig();
  json["attention_bias"] = true;
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE(config->qkv_bias);
  EXPECT_TRUE(config->o_bias);
}

TEST(ModelConfigTest, MistralRecordsSlidingWindow) {
  nlohmann::json json = BaseConfig();
  json["model_type"] = "mistral";
  json["sliding_window"] = 4096;
  json["head_dim"] = nullptr;
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->sliding_window, 4096);
  EXPECT_EQ(config->head_dim, 8);
  json["sliding_window"] = nullptr;
  config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->sliding_window, 0);
}

TEST(ModelConfigTest, InfersModelTypeFromArchitectures) {
  nlohmann::json json = BaseConfig();
  json.erase("model_type");
  json["architectures"] = {"MistralForCausalLM"};
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->model_type, "mistral");
}

TEST(ModelConfigTest, OptionalKeysTakeTransformersDefaults) {
  nlohmann::json json = BaseConfig();
  json.erase("num_key_value_heads");
  json.erase("max_position_embeddings");
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_kv_heads, 8);
  EXPECT_EQ(config->max_position_embeddings, 2048);
  EXPECT_EQ(config->rms_norm_eps, 1e-6f);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_EQ(config->bos_token_id, -1);
  EXPECT_TRUE(config->eos_token_ids.empty());
  EXPECT_EQ(config->dtype, "float32");
}

TEST(ModelConfigTest, ExplicitHeadDimNeedNotDivideHiddenSize) {
  nlohmann::json json = BaseConfig();
  json["hidden_size"] = 100;
  json["head_dim"] = 16;
  absl::StatusOr<ModelConfig> config = Parse(json);
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->head_dim, 16);
}

TEST(ModelConfigTest, RejectsMalformedJson) {
  ExpectInvalid(ParseModelConfig("{\"hidden_size\": 64,", kSource), "not valid JSON");
  ExpectInvalid(ParseModelConfig("[1, 2]", kSource), "JSON object");
}

TEST(ModelConfigTest, RejectsMissingRequiredKey) {
  for (const char* key : {"hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "vocab_size"}) {
    nlohmann::json json = BaseConfig();
    json.erase(key);
    ExpectInvalid(Parse(json), key);
  }
}

TEST(ModelConfigTest, RejectsWrongValueTypes) {
  nlohmann::json json = BaseConfig();
  json["hidden_size"] = "64";
  ExpectInvalid(Parse(json), "hidden_size");
  json = BaseConfig();
  json["num_hidden_layers"] = 2.5;
  ExpectInvalid(Parse(json), "num_hidden_layers");
  json = BaseConfig();
  json["tie_word_embeddings"] = "yes";
  ExpectInvalid(Parse(json), "tie_word_embeddings");
  json = BaseConfig();
  json["eos_token_id"] = {2, "3"};
  ExpectInvalid(Parse(json), "eos_token_id");
  json = BaseConfig();
  json["vocab_size"] = 1e12;
  ExpectInvalid(Parse(json), "vocab_size");
  json = BaseConfig();
  json["vocab_size"] = 4294967296LL;
  ExpectInvalid(Parse(json), "vocab_size");
}

TEST(ModelConfigTest, RejectsInconsistentGeometry) {
  nlohmann::json json = BaseConfig();
  json["num_attention_heads"] = 6;  // 64 % 6 != 0 and no head_dim
  json["num_key_value_heads"] = 3;
  ExpectInvalid(Parse(json), "num_attention_heads");
  json = BaseConfig();
  json["num_key_value_heads"] = 3;
  ExpectInvalid(Parse(json), "num_key_value_heads");
  json = BaseConfig();
  json["num_hidden_layers"] = 0;
  ExpectInvalid(Parse(json), "num_hidden_layers");
  json = BaseConfig();
  json["head_dim"] = 7;
  ExpectInvalid(Parse(json), "head_dim");
  json = BaseConfig();
  json["intermediate_size"] = -5;
  ExpectInvalid(Parse(json), "intermediate_size");
  json = BaseConfig();
  json["num_attention_heads"] = 0;
  ExpectInvalid(Parse(json), "num_attention_heads");
}

TEST(ModelConfigTest, RejectsUnsupportedFeatures) {
  nlohmann::json json = BaseConfig();
  json["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  ExpectInvalid(Parse(json), "yarn");
  json = BaseConfig();
  json["rope_scaling"] = {{"rope_type", "llama3"},
                          {"factor", 8.0},
                          {"high_freq_factor", 4.0},
                          {"original_max_position_embeddings", 8192}};
  ExpectInvalid(Parse(json), "rope_scaling.low_freq_factor");
  json = BaseConfig();
  json["rope_scaling"] = {{"factor", 4.0}};
  ExpectInvalid(Parse(json), "rope_type");
  json = BaseConfig();
  json["model_type"] = "gemma";
  ExpectInvalid(Parse(json), "gemma");
  json = BaseConfig();
  json["hidden_act"] = "gelu";
  ExpectInvalid(Parse(json), "hidden_act");
  json = BaseConfig();
  json["mlp_bias"] = true;
  ExpectInvalid(Parse(json), "mlp_bias");
  json = BaseConfig();
  json["torch_dtype"] = "int8";
  ExpectInvalid(Parse(json), "torch_dtype");
  json = BaseConfig();
  json.erase("model_type");
  ExpectInvalid(Parse(json), "model_type");
  json["architectures"] = {"GPT2LMHeadModel"};
  ExpectInvalid(Parse(json), "architectures");
}

// Each parameter below is a finite, positive float32, yet the float32 frequencies the
// runtime derives from it overflow, underflow, or give angles past float range.
TEST(ModelConfigTest, RejectsRopeParametersWhoseFrequenciesAreUnusable) {
  const auto expect_rejected = [](const nlohmann::json& json, const std::string& field,
                                  const std::string& problem) {
    ExpectInvalid(Parse(json), field);
    EXPECT_THAT(Parse(json).status().message(), HasSubstr(problem)) << json.dump();
  };
  nlohmann::json json = BaseConfig();
  json["rope_scaling"] = {{"rope_type", "linear"}, {"factor", 1e-45}};
  expect_rejected(json, "rope scaling 'factor'", "to inf");
  json["rope_scaling"]["factor"] = 1e-36;
  expect_rejected(json, "rope scaling 'factor'", "angle at position 511 overflows");
  json["rope_theta"] = 1e30;
  json["rope_scaling"]["factor"] = 1e30;
  expect_rejected(json, "rope scaling 'factor'", "to 0;");
  json["rope_scaling"] = {{"rope_type", "llama3"},
                          {"factor", 1e-45},
                          {"low_freq_factor", 1.0},
                          {"high_freq_factor", 4.0},
                          {"original_max_position_embeddings", 8192}};
  json["rope_theta"] = 500000.0;
  expect_rejected(json, "llama3 rope scaling ('factor'", "to inf");
  // Blamed on theta, scaled or not, when the unscaled frequencies already fail.
  json["head_dim"] = 128;
  json["rope_theta"] = 1e-45;
  expect_rejected(json, "'rope_theta'", "'head_dim' 128");
  json.erase("rope_scaling");
  expect_rejected(json, "'rope_theta'", "overflows");
  json["max_position_embeddings"] = 1;  // angles stay 0, so only infinity remains
  expect_rejected(json, "'rope_theta'", "to inf");
  json["rope_theta"] = 1e30;
  EXPECT_TRUE(Parse(json).ok()) << Parse(json).status();
}

TEST(ModelConfigTest, RejectsTokenIdsOutsideVocabulary) {
  nlohmann::json json = BaseConfig();
  json["eos_token_id"] = 512;
  ExpectInvalid(Parse(json), "eos_token_id");
  json = BaseConfig();
  json["bos_token_id"] = -7;
  ExpectInvalid(Parse(json), "bos_token_id");
}

TEST(ModelConfigTest, MissingFileIsNotFound) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig("/nonexistent/lserve/config.json");
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(config.status().message(), HasSubstr("/nonexistent/lserve/config.json"));
}

TEST(ModelConfigTest, ValidateAcceptsBuiltInConfigsAndRejectsBadGrouping) {
  EXPECT_TRUE(ValidateModelConfig(TinySyntheticConfig()).ok());
  EXPECT_TRUE(ValidateModelConfig(Synthetic100MConfig()).ok());
  EXPECT_TRUE(ValidateModelConfig(Llama3_8BConfig()).ok());
  ModelConfig config = TinySyntheticConfig();
  config.num_kv_heads = 3;
  EXPECT_EQ(ValidateModelConfig(config).code(), absl::StatusCode::kInvalidArgument);
  config = TinySyntheticConfig();
  config.rope_scaling.type = static_cast<RopeScalingType>(7);
  EXPECT_EQ(ValidateModelConfig(config).code(), absl::StatusCode::kInvalidArgument);
  config = TinySyntheticConfig();
  config.model_type = "qwen2";  // Qwen2 always carries q/k/v biases
  EXPECT_EQ(ValidateModelConfig(config).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelConfigTest, JsonRoundTripsEveryFamily) {
  ModelConfig qwen2 = *ParseModelConfig(kQwen2, kSource);
  qwen2.sliding_window = 4096;
  ModelConfig mistral = TinySyntheticConfig();
  mistral.model_type = "mistral";
  mistral.sliding_window = 4096;
  mistral.rope_scaling.type = RopeScalingType::kLinear;
  mistral.rope_scaling.factor = 2.5f;
  ModelConfig biased = TinySyntheticConfig();
  biased.qkv_bias = biased.o_bias = true;
  biased.head_dim = 48;
  for (const ModelConfig& original :
       {TinySyntheticConfig(), Synthetic100MConfig(), Llama3_8BConfig(), qwen2, mistral, biased}) {
    const std::string text = ModelConfigToJson(original);
    absl::StatusOr<ModelConfig> parsed = ParseModelConfig(text, kSource);
    ASSERT_TRUE(parsed.ok()) << parsed.status() << "\n" << text;
    ExpectSameConfig(*parsed, original);
  }
}

TEST(ModelConfigTest, JsonUsesTransformersKeys) {
  const nlohmann::json json = nlohmann::json::parse(ModelConfigToJson(Llama3_8BConfig()));
  EXPECT_EQ(json["architectures"][0], "LlamaForCausalLM");
  EXPECT_EQ(json["num_hidden_layers"], 32);
  EXPECT_EQ(json["num_key_value_heads"], 8);
  EXPECT_EQ(json["rms_norm_eps"].get<double>(), 1e-05);  // shortest decimal, not 9.99e-06
  EXPECT_EQ(json["rope_scaling"]["rope_type"], "llama3");
  EXPECT_EQ(json["eos_token_id"], nlohmann::json({128001, 128008, 128009}));
  EXPECT_EQ(json["torch_dtype"], "bfloat16");
  EXPECT_EQ(json["hidden_act"], "silu");
  const nlohmann::json qwen2 =
      nlohmann::json::parse(ModelConfigToJson(*ParseModelConfig(kQwen2, kSource)));
  EXPECT_EQ(qwen2["architectures"][0], "Qwen2ForCausalLM");
  EXPECT_FALSE(qwen2.contains("attention_bias"));
  EXPECT_EQ(qwen2["eos_token_id"], 151643);
}

TEST(ModelConfigTest, RandomTextCorruptionNeverCrashes) {
  const std::string good = kLlama31V4;
  uint64_t state = 7;
  for (int trial = 0; trial < 5000; ++trial) {
    std::string text = good;
    for (int e = 0; e < 1 + trial % 3; ++e) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      text[(state >> 33) % text.size()] = "0123456789-.e\"{}[],:tfn x"[(state >> 58) % 25];
    }
    absl::StatusOr<ModelConfig> config = ParseModelConfig(text, kSource);
    if (!config.ok()) {
      EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(config.status().message(), HasSubstr(kSource));
    }
  }
}

}  // namespace
}  // namespace lserve
