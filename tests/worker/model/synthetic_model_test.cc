#include "worker/model/synthetic_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/worker/model/test_files.h"

namespace lserve {
namespace {

using ::testing::HasSubstr;
using testing_util::ReadBytes;
using testing_util::ScratchDir;

// FNV-1a over every tensor's bytes in checkpoint order.
uint64_t Checksum(ModelWeights& weights) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (const NamedWeight& named : ListModelTensors(weights.config, weights)) {
    const auto* bytes = reinterpret_cast<const uint8_t*>(named.tensor->data);
    for (int64_t i = 0; i < named.tensor->NumElements() * 4; ++i) {
      hash = (hash ^ bytes[i]) * 0x100000001b3ull;
    }
  }
  return hash;
}

std::vector<float> MatVec(const WeightTensor& w, const std::vector<float>& x) {
  std::vector<float> y(w.shape[0]);
  for (int64_t r = 0; r < w.shape[0]; ++r) {
    double sum = 0;
    for (int64_t c = 0; c < w.shape[1]; ++c) sum += w.data[r * w.shape[1] + c] * x[c];
    y[r] = static_cast<float>(sum);
  }
  return y;
}

std::vector<float> RmsNorm(const std::vector<float>& x, const WeightTensor& w, float eps) {
  double sum = 0;
  for (float v : x) sum += v * v;
  const float scale = 1.0f / std::sqrt(static_cast<float>(sum / x.size()) + eps);
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * scale * w.data[i];
  return y;
}

// Logits of a one-token sequence, where attention reduces to each query head copying its
// KV head's value vector. Also reports the largest residual activation.
std::vector<float> FirstTokenLogits(const ModelWeights& w, int token, float& max_activation) {
  const ModelConfig& c = w.config;
  std::vector<float> h(w.embed_tokens.data + int64_t{token} * c.hidden_size,
                       w.embed_tokens.data + int64_t{token + 1} * c.hidden_size);
  max_activation = 0;
  for (const LayerWeights& layer : w.layers) {
    const std::vector<float> v = MatVec(layer.v_proj, RmsNorm(h, layer.input_norm, c.rms_norm_eps));
    std::vector<float> attention(int64_t{c.num_heads} * c.head_dim);
    const int group = c.num_heads / c.num_kv_heads;
    for (int head = 0; head < c.num_heads; ++head) {
      std::copy_n(v.begin() + (head / group) * c.head_dim, c.head_dim,
                  attention.begin() + head * c.head_dim);
    }
    std::vector<float> out = MatVec(layer.o_proj, attention);
    for (size_t i = 0; i < h.size(); ++i) h[i] += out[i];
    const std::vector<float> x = RmsNorm(h, layer.post_attention_norm, c.rms_norm_eps);
    std::vector<float> gate = MatVec(layer.gate_proj, x);
    const std::vector<float> up = MatVec(layer.up_proj, x);
    for (size_t i = 0; i < gate.size(); ++i) gate[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
    out = MatVec(layer.down_proj, gate);
    for (size_t i = 0; i < h.size(); ++i) {
      h[i] += out[i];
      max_activation = std::max(max_activation, std::fabs(h[i]));
    }
  }
  return MatVec(w.lm_head, RmsNorm(h, w.final_norm, c.rms_norm_eps));
}

TEST(SyntheticModelTest, BuiltInConfigsHaveTheDocumentedGeometry) {
  const ModelConfig tiny = TinySyntheticConfig();
  EXPECT_EQ(tiny.hidden_size, 128);
  EXPECT_EQ(tiny.num_layers, 4);
  EXPECT_EQ(tiny.num_kv_heads, 2);
  EXPECT_FALSE(tiny.tie_word_embeddings);
  const int64_t params_100m = Synthetic100MConfig().NumParameters();
  EXPECT_GE(params_100m, 80'000'000);
  EXPECT_LE(params_100m, 140'000'000);
  EXPECT_FALSE(Synthetic100MConfig().tie_word_embeddings);
  const ModelConfig llama3 = Llama3_8BConfig();
  EXPECT_EQ(llama3.NumParameters(), 8'030'261'248);  // Llama-3-8B's published count
  EXPECT_EQ(llama3.rope_scaling.type, RopeScalingType::kLlama3);
  EXPECT_EQ(llama3.max_position_embeddings, 131072);
}

TEST(SyntheticModelTest, SameSeedGivesBitwiseSameWeights) {
  absl::StatusOr<ModelWeights> a = MakeSyntheticWeights(TinySyntheticConfig(), 42);
  absl::StatusOr<ModelWeights> b = MakeSyntheticWeights(TinySyntheticConfig(), 42);
  absl::StatusOr<ModelWeights> c = MakeSyntheticWeights(TinySyntheticConfig(), 43);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(Checksum(*a), Checksum(*b));
  EXPECT_NE(Checksum(*a), Checksum(*c));
  EXPECT_NE(std::memcmp(a->layers[0].q_proj.data, c->layers[0].q_proj.data, 4 * 128), 0);
  EXPECT_NE(a->lm_head.data, a->embed_tokens.data);  // the built-in model is untied
}

TEST(SyntheticModelTest, WeightsArePinnedAcrossMachines) {
  // Pins the generator: any change to these values changes every synthetic model.
  absl::StatusOr<ModelWeights> weights = MakeSyntheticWeights(TinySyntheticConfig(), 0);
  ASSERT_TRUE(weights.ok());
  EXPECT_EQ(Checksum(*weights), 0x9ba4f1df7c65b746ull);
}

TEST(SyntheticModelTest, WeightStatisticsKeepActivationsOrderOne) {
  absl::StatusOr<ModelWeights> weights = MakeSyntheticWeights(Synthetic100MConfig(), 5);
  ASSERT_TRUE(weights.ok()) << weights.status();
  const WeightTensor& down = weights->layers[7].down_proj;  // fan_in 2048
  double sum = 0, sum_sq = 0;
  for (int64_t i = 0; i < down.NumElements(); ++i) {
    sum += down.data[i];
    sum_sq += double{down.data[i]} * down.data[i];
  }
  const double n = static_cast<double>(down.NumElements());
  EXPECT_NEAR(sum / n, 0.0, 1e-4);
  EXPECT_NEAR(sum_sq / n * 2048, 1.0, 0.01);
  const WeightTensor& norm = weights->layers[2].input_norm;
  for (int64_t i = 0; i < norm.NumElements(); ++i) {
    ASSERT_GT(norm.data[i], 0.9f);
    ASSERT_LT(norm.data[i], 1.1f);
  }
  EXPECT_NE(weights->lm_head.data, weights->embed_tokens.data);
}

TEST(SyntheticModelTest, LogitsAreSeparatedAndActivationsBounded) {
  for (const ModelConfig& config : {TinySyntheticConfig(), Synthetic100MConfig()}) {
    absl::StatusOr<ModelWeights> weights = MakeSyntheticWeights(config, 11);
    ASSERT_TRUE(weights.ok()) << weights.status();
    const int tokens = config.vocab_size > 1000 ? 6 : 48;
    int separated = 0;
    for (int t = 0; t < tokens; ++t) {
      float max_activation = 0;
      std::vector<float> logits =
          FirstTokenLogits(*weights, t * 17 % config.vocab_size, max_activation);
      EXPECT_LT(max_activation, 100.0f);
      std::partial_sort(logits.begin(), logits.begin() + 2, logits.end(), std::greater<>());
      EXPECT_GT(logits[0], 0.5f);
      if (logits[0] - logits[1] > 1e-3f) ++separated;
    }
    EXPECT_GE(separated, tokens - 1) << config.hidden_size;
  }
}

TEST(SyntheticModelTest, F32WriteLoadRoundTripIsBitwise) {
  ScratchDir dir;
  // Large enough (9M parameters) to take the multi-threaded generation path.
  ModelConfig config = TinySyntheticConfig();
  config.vocab_size = 32000;
  config.tie_word_embeddings = false;
  ASSERT_TRUE(WriteSyntheticModel(config, 9, DType::kF32, dir.path()).ok());
  absl::StatusOr<ModelWeights> loaded = LoadModelWeights(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  absl::StatusOr<ModelWeights> made = MakeSyntheticWeights(config, 9);
  ASSERT_TRUE(made.ok());
  EXPECT_EQ(Checksum(*loaded), Checksum(*made));
  EXPECT_EQ(loaded->config.NumParameters(), made->config.NumParameters());
  const nlohmann::json json = nlohmann::json::parse(ReadBytes(dir / "config.json"));
  EXPECT_EQ(json["torch_dtype"], "float32");
  EXPECT_EQ(json["architectures"][0], "LlamaForCausalLM");
}

TEST(SyntheticModelTest, HalfPrecisionWriteLoadRoundTripIsWithinRounding) {
  for (DType dtype : {DType::kBF16, DType::kF16}) {
    ScratchDir dir;
    ASSERT_TRUE(WriteSyntheticModel(TinySyntheticConfig(), 9, dtype, dir.path()).ok());
    absl::StatusOr<ModelWeights> loaded = LoadModelWeights(dir.path());
    ASSERT_TRUE(loaded.ok()) << loaded.status();
    EXPECT_EQ(loaded->config.dtype, dtype == DType::kBF16 ? "bfloat16" : "float16");
    EXPECT_NE(loaded->lm_head.data, loaded->embed_tokens.data);
    absl::StatusOr<ModelWeights> made = MakeSyntheticWeights(TinySyntheticConfig(), 9);
    ASSERT_TRUE(made.ok());
    const std::vector<NamedWeight> got = ListModelTensors(loaded->config, *loaded);
    const std::vector<NamedWeight> want = ListModelTensors(made->config, *made);
    ASSERT_EQ(got.size(), want.size());
    const float tolerance = dtype == DType::kBF16 ? 0x1p-8f : 0x1p-11f;
    for (size_t t = 0; t < got.size(); ++t) {
      for (int64_t i = 0; i < want[t].tensor->NumElements(); ++i) {
        const float original = want[t].tensor->data[i];
        const float rounded = dtype == DType::kBF16 ? BFloat16ToFloat(FloatToBFloat16(original))
                                                    : HalfToFloat(FloatToHalf(original));
        ASSERT_EQ(got[t].tensor->data[i], rounded) << want[t].name << " " << i;
        // The absolute term covers values that fall into the f16 subnormal range.
        ASSERT_LE(std::fabs(rounded - original), tolerance * std::fabs(original) + 0x1p-25f);
      }
    }
  }
}

TEST(SyntheticModelTest, RejectsInvalidConfig) {
  ModelConfig config = TinySyntheticConfig();
  config.num_kv_heads = 3;
  absl::StatusOr<ModelWeights> weights = MakeSyntheticWeights(config, 1);
  ASSERT_FALSE(weights.ok());
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(weights.status().message(), HasSubstr("num_key_value_heads"));
  ScratchDir dir;
  EXPECT_EQ(WriteSyntheticModel(config, 1, DType::kF32, dir.path()).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lserve
