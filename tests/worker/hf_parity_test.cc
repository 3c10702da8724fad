// Logits against Hugging Face transformers on small random checkpoints of every supported
// family (fixtures from scripts/make_hf_fixtures.py).
//
// Tolerances, as max |engine - reference| / max |reference| over all positions:
//  * 1e-4 against transformers' float32 forward pass on the same weights (for the bf16
//    checkpoint: its weights upcast to float32, which is exactly what the engine loads);
//  * 3e-2 against transformers computing in bf16, the documented bound between this
//    float32 backend and a bf16 one (bf16 keeps 8 mantissa bits).
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/backend_registry.h"
#include "tests/kernels/opaque_cpu_backend.h"
#include "tests/worker/test_util.h"
#include "worker/engine.h"

namespace lserve {
namespace {

const std::string kFixtures = LSERVE_SOURCE_DIR "/tests/fixtures/hf/";

std::vector<float> Flatten(const nlohmann::json& rows) {
  std::vector<float> out;
  for (const auto& row : rows) {
    for (float v : row.get<std::vector<float>>()) out.push_back(v);
  }
  return out;
}

// Runs the ids through a fresh engine in chunks of `chunk` tokens, keeping every logit.
// With `device_style`, the engine runs on the CPU backend behind memory the host cannot
// read (OpaqueCpuBackend): the path a GPU backend takes, with q/k/v and gate/up joined
// into one GEMM each, strided q/k/v rows and RoPE handed to the KV append.
std::vector<float> EngineLogits(const std::string& folder, const std::vector<int32_t>& ids,
                                size_t chunk, bool device_style = false) {
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(folder);
  EXPECT_TRUE(weights.ok()) << weights.status();
  EngineOptions options;
  options.num_threads = 2;
  options.attention = SparseAttentionConfig::Dense();
  options.attention.page_size = 16;
  options.max_sequences = 1;
  std::unique_ptr<Backend> cpu;
  absl::StatusOr<std::unique_ptr<Engine>> engine;
  if (device_style) {
    auto created = CreateBackend("cpu", {2, 0});
    EXPECT_TRUE(created.ok()) << created.status();
    cpu = *std::move(created);
    options.max_kv_cache_bytes = int64_t{64} << 20;
    auto opaque = std::make_unique<testing::OpaqueCpuBackend>(cpu.get());
    opaque->CheckEarlyLoadOrder();
    engine = Engine::Create(*std::move(weights), options, std::move(opaque));
  } else {
    engine = Engine::Create(*std::move(weights), options);
  }
  EXPECT_TRUE(engine.ok()) << engine.status();
  EXPECT_TRUE((*engine)->AddSequence(1).ok());
  std::vector<float> logits;
  for (size_t begin = 0; begin < ids.size(); begin += chunk) {
    const size_t end = std::min(ids.size(), begin + chunk);
    StepInput input{1, std::vector<int32_t>(ids.begin() + begin, ids.begin() + end),
                    StepPhase::kPrefill, LogitRows::kAll};
    auto out = (*engine)->Step({input});
    EXPECT_TRUE(out.ok()) << out.status();
    logits.insert(logits.end(), (*out)[0].logits.begin(), (*out)[0].logits.end());
  }
  return logits;
}

class HfParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(HfParityTest, LogitsMatchTransformersFloat32) {
  const std::string folder = kFixtures + GetParam();
  const auto expected = testing::ReadJson(folder + "/expected.json");
  const auto ids = expected["input_ids"].get<std::vector<int32_t>>();
  const std::vector<float> reference = Flatten(expected["logits"]);
  for (size_t chunk : {ids.size(), size_t{5}, size_t{1}}) {
    const std::vector<float> logits = EngineLogits(folder, ids, chunk);
    ASSERT_EQ(logits.size(), reference.size());
    EXPECT_LE(testing::RelativeMaxError(logits, reference), 1e-4) << "chunk " << chunk;
  }
}

TEST_P(HfParityTest, DeviceStylePathMatchesTransformersFloat32) {
  const std::string folder = kFixtures + GetParam();
  const auto expected = testing::ReadJson(folder + "/expected.json");
  const auto ids = expected["input_ids"].get<std::vector<int32_t>>();
  const std::vector<float> reference = Flatten(expected["logits"]);
  for (size_t chunk : {ids.size(), size_t{1}}) {
    const std::vector<float> logits = EngineLogits(folder, ids, chunk, /*device_style=*/true);
    ASSERT_EQ(logits.size(), reference.size());
    EXPECT_LE(testing::RelativeMaxError(logits, reference), 1e-4) << "chunk " << chunk;
  }
}

INSTANTIATE_TEST_SUITE_P(Families, HfParityTest,
                         ::testing::Values("llama3_rope_scaling", "mistral", "qwen2_qkv_bias_tied",
                                           "llama_bf16_sharded"));

TEST(HfParityBf16Test, FloatBackendStaysWithinBf16ToleranceOfBf16Compute) {
  const std::string folder = kFixtures + "llama_bf16_sharded";
  const auto expected = testing::ReadJson(folder + "/expected.json");
  const auto ids = expected["input_ids"].get<std::vector<int32_t>>();
  const std::vector<float> bf16_reference = Flatten(expected["logits_bf16_compute"]);
  const std::vector<float> logits = EngineLogits(folder, ids, ids.size());
  const double error = testing::RelativeMaxError(logits, bf16_reference);
  EXPECT_LE(error, 3e-2);
  // And bf16 compute really differs from float32: the fixture is not a copy.
  EXPECT_GT(testing::RelativeMaxError(Flatten(expected["logits"]), bf16_reference), 1e-4);
}

}  // namespace
}  // namespace lserve
