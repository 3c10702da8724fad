#include "worker/model/model_weights.h"

#include <cstring>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/worker/model/test_files.h"
#include "worker/model/safetensors.h"
#include "worker/model/synthetic_model.h"

namespace lserve {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing_util::ReadBytes;
using testing_util::ScratchDir;
using testing_util::WriteBytes;

constexpr char kStories[] = LSERVE_SHARED_DIR "/models/stories260K";

bool SameData(const WeightTensor& a, const WeightTensor& b) {
  return a.shape == b.shape && std::memcmp(a.data, b.data, sizeof(float) * a.NumElements()) == 0;
}

// Every tensor of `a` is bitwise equal to the same tensor of `b`.
void ExpectSameWeights(ModelWeights& a, ModelWeights& b) {
  const std::vector<NamedWeight> list_a = ListModelTensors(a.config, a);
  const std::vector<NamedWeight> list_b = ListModelTensors(b.config, b);
  ASSERT_EQ(list_a.size(), list_b.size());
  for (size_t i = 0; i < list_a.size(); ++i) {
    EXPECT_TRUE(SameData(*list_a[i].tensor, *list_b[i].tensor)) << list_a[i].name;
  }
  EXPECT_TRUE(SameData(a.lm_head, b.lm_head));
}

absl::StatusOr<ModelWeights> WriteAndLoad(const ModelConfig& config, const ScratchDir& dir) {
  absl::Status written = WriteSyntheticModel(config, 7, DType::kF32, dir.path());
  if (!written.ok()) return written;
  return LoadModelWeights(dir.path());
}

TEST(ModelWeightsTest, LoadsStories260KWithTiedEmbeddings) {
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(kStories);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->config.hidden_size, 64);
  ASSERT_EQ(weights->layers.size(), 5u);
  EXPECT_THAT(weights->embed_tokens.shape, ElementsAre(512, 64));
  EXPECT_EQ(weights->lm_head.data, weights->embed_tokens.data);
  EXPECT_THAT(weights->lm_head.shape, ElementsAre(512, 64));
  EXPECT_THAT(weights->final_norm.shape, ElementsAre(64));
  for (const LayerWeights& layer : weights->layers) {
    EXPECT_THAT(layer.input_norm.shape, ElementsAre(64));
    EXPECT_THAT(layer.q_proj.shape, ElementsAre(64, 64));
    EXPECT_THAT(layer.k_proj.shape, ElementsAre(32, 64));
    EXPECT_THAT(layer.v_proj.shape, ElementsAre(32, 64));
    EXPECT_THAT(layer.o_proj.shape, ElementsAre(64, 64));
    EXPECT_THAT(layer.gate_proj.shape, ElementsAre(172, 64));
    EXPECT_THAT(layer.up_proj.shape, ElementsAre(172, 64));
    EXPECT_THAT(layer.down_proj.shape, ElementsAre(64, 172));
    EXPECT_THAT(layer.post_attention_norm.shape, ElementsAre(64));
    EXPECT_TRUE(layer.q_bias.empty());
    EXPECT_TRUE(layer.o_bias.empty());
  }
  // The values are the file's own F32 bytes.
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(std::string(kStories) + "/model.safetensors");
  ASSERT_TRUE(file.ok());
  const TensorInfo* down = (*file)->Find("model.layers.4.mlp.down_proj.weight");
  ASSERT_NE(down, nullptr);
  EXPECT_EQ(std::memcmp(weights->layers[4].down_proj.data, down->data, down->num_bytes), 0);
}

TEST(ModelWeightsTest, TensorsOutliveTheModelWeightsObject) {
  WeightTensor embed;
  std::vector<float> first_row;
  {
    absl::StatusOr<ModelWeights> weights = LoadModelWeights(kStories);
    ASSERT_TRUE(weights.ok()) << weights.status();
    embed = weights->embed_tokens;
    first_row.assign(embed.data, embed.data + 64);
  }
  EXPECT_EQ(std::memcmp(embed.data, first_row.data(), 64 * sizeof(float)), 0);
}

TEST(ModelWeightsTest, LoadsShardedCheckpoint) {
  ModelConfig small = TinySyntheticConfig();
  small.tie_word_embeddings = false;
  absl::StatusOr<ModelWeights> expected = MakeSyntheticWeights(small, 3);
  ASSERT_TRUE(expected.ok()) << expected.status();
  ScratchDir dir;
  WriteBytes(dir / "config.json", ModelConfigToJson(small));
  // Layers 0-1 and the embeddings in the first shard, the rest (in BF16) in the second.
  std::vector<TensorToWrite> shard1, shard2;
  nlohmann::json weight_map;
  for (const NamedWeight& named : ListModelTensors(small, *expected)) {
    const bool first = named.name.find("layers.2.") == std::string::npos &&
                       named.name.find("layers.3.") == std::string::npos &&
                       named.name != "lm_head.weight" && named.name != "model.norm.weight";
    (first ? shard1 : shard2)
        .push_back({named.name, named.shape,
                    std::span<const float>(named.tensor->data, named.tensor->NumElements())});
    weight_map[named.name] =
        first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  ASSERT_TRUE(WriteSafetensors(dir / "model-00001-of-00002.safetensors", shard1, DType::kF32).ok());
  ASSERT_TRUE(
      WriteSafetensors(dir / "model-00002-of-00002.safetensors", shard2, DType::kBF16).ok());
  WriteBytes(
      dir / "model.safetensors.index.json",
      nlohmann::json({{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}).dump());
  absl::StatusOr<ModelWeights> loaded = LoadModelWeights(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(SameData(loaded->embed_tokens, expected->embed_tokens));
  EXPECT_TRUE(SameData(loaded->layers[1].down_proj, expected->layers[1].down_proj));
  const WeightTensor& got = loaded->layers[3].gate_proj;
  const WeightTensor& want = expected->layers[3].gate_proj;
  for (int64_t i = 0; i < want.NumElements(); ++i) {
    ASSERT_EQ(got.data[i], BFloat16ToFloat(FloatToBFloat16(want.data[i]))) << i;
  }
  EXPECT_NE(loaded->lm_head.data, loaded->embed_tokens.data);
}

TEST(ModelWeightsTest, LoadsBiasesOfQwen2AndBiasedLlama) {
  ModelConfig qwen2 = TinySyntheticConfig();
  qwen2.model_type = "qwen2";
  qwen2.qkv_bias = true;
  ScratchDir qwen_dir;
  absl::StatusOr<ModelWeights> weights = WriteAndLoad(qwen2, qwen_dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_THAT(weights->layers[0].q_bias.shape, ElementsAre(128));
  EXPECT_THAT(weights->layers[0].k_bias.shape, ElementsAre(64));
  EXPECT_THAT(weights->layers[0].v_bias.shape, ElementsAre(64));
  EXPECT_TRUE(weights->layers[0].o_bias.empty());

  ModelConfig llama = TinySyntheticConfig();
  llama.qkv_bias = llama.o_bias = true;
  ScratchDir llama_dir;
  weights = WriteAndLoad(llama, llama_dir);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_THAT(weights->layers[3].o_bias.shape, ElementsAre(128));
  EXPECT_FALSE(weights->layers[3].q_bias.empty());
}

TEST(ModelWeightsTest, ShapeMismatchNamesTensorFileAndShapes) {
  ScratchDir dir;
  ASSERT_TRUE(WriteSyntheticModel(TinySyntheticConfig(), 1, DType::kF32, dir.path()).ok());
  ModelConfig wrong = TinySyntheticConfig();
  wrong.intermediate_size = 200;
  WriteBytes(dir / "config.json", ModelConfigToJson(wrong));
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(dir.path());
  ASSERT_FALSE(weights.ok());
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(weights.status().message(), AllOf(HasSubstr("model.layers.0.mlp.gate_proj.weight"),
                                                HasSubstr((dir / "model.safetensors").string()),
                                                HasSubstr("[384, 128]"), HasSubstr("[200, 128]")));
}

TEST(ModelWeightsTest, UntiedConfigWithoutLmHeadFails) {
  ScratchDir dir;
  ModelConfig tied = TinySyntheticConfig();
  tied.tie_word_embeddings = true;  // written without lm_head.weight
  ASSERT_TRUE(WriteSyntheticModel(tied, 1, DType::kF32, dir.path()).ok());
  ModelConfig untied = TinySyntheticConfig();
  untied.tie_word_embeddings = false;
  WriteBytes(dir / "config.json", ModelConfigToJson(untied));
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(dir.path());
  ASSERT_FALSE(weights.ok());
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(weights.status().message(),
              AllOf(HasSubstr("lm_head.weight"), HasSubstr("tie_word_embeddings")));
}

TEST(ModelWeightsTest, MissingLayerTensorFails) {
  ScratchDir dir;
  ASSERT_TRUE(WriteSyntheticModel(TinySyntheticConfig(), 1, DType::kF32, dir.path()).ok());
  ModelConfig deeper = TinySyntheticConfig();
  deeper.num_layers = 5;
  WriteBytes(dir / "config.json", ModelConfigToJson(deeper));
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(dir.path());
  ASSERT_FALSE(weights.ok());
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(weights.status().message(), HasSubstr("model.layers.4.input_layernorm.weight"));
}

TEST(ModelWeightsTest, MissingOrCorruptFilesFailCleanly) {
  ScratchDir dir;
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(dir.path());
  ASSERT_FALSE(weights.ok());
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(weights.status().message(), HasSubstr("config.json"));

  ASSERT_TRUE(WriteSyntheticModel(TinySyntheticConfig(), 1, DType::kF16, dir.path()).ok());
  const std::string bytes = ReadBytes(dir / "model.safetensors");
  WriteBytes(dir / "model.safetensors", bytes.substr(0, bytes.size() / 2));  // truncated
  weights = LoadModelWeights(dir.path());
  ASSERT_FALSE(weights.ok());
  EXPECT_EQ(weights.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(weights.status().message(), HasSubstr("model.safetensors"));
}

TEST(ModelWeightsTest, F32RoundTripThroughDiskIsBitwise) {
  ScratchDir dir;
  absl::StatusOr<ModelWeights> loaded = WriteAndLoad(TinySyntheticConfig(), dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  absl::StatusOr<ModelWeights> made = MakeSyntheticWeights(TinySyntheticConfig(), 7);
  ASSERT_TRUE(made.ok());
  ExpectSameWeights(*loaded, *made);
}

}  // namespace
}  // namespace lserve
