// Engine steps on the built-in synthetic model.
#include "worker/engine.h"

#include <cmath>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/sampling.h"
#include "tests/worker/engine_test_util.h"
#include "tests/worker/test_util.h"
#include "worker/attention/kv_store_sizing.h"
#include "worker/model/synthetic_model.h"

namespace lserve {
namespace {

TEST(EngineStepTest, MixedBatchEqualsSequencesRunAlone) {
  auto batched = testing::MakeTinyEngine();
  auto alone = testing::MakeTinyEngine();
  // Sequence 1 decodes after a 40-token prefill while sequence 2 prefills 23 tokens.
  for (auto* engine : {batched.get(), alone.get()}) {
    ASSERT_TRUE(engine->AddSequence(1).ok());
    ASSERT_TRUE(engine->AddSequence(2).ok());
    ASSERT_TRUE(
        engine->Step({{1, testing::Ids(40, 1), StepPhase::kPrefill, LogitRows::kLast}}).ok());
  }
  auto mixed = batched->Step({{1, {7}, StepPhase::kDecode, LogitRows::kLast},
                              {2, testing::Ids(23, 2), StepPhase::kPrefill, LogitRows::kAll}});
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  auto one = alone->Step({{1, {7}, StepPhase::kDecode, LogitRows::kLast}});
  auto two = alone->Step({{2, testing::Ids(23, 2), StepPhase::kPrefill, LogitRows::kAll}});
  ASSERT_TRUE(one.ok() && two.ok());
  EXPECT_LE(testing::RelativeMaxError((*mixed)[0].logits, (*one)[0].logits), 1e-5);
  EXPECT_LE(testing::RelativeMaxError((*mixed)[1].logits, (*two)[0].logits), 1e-5);
  EXPECT_EQ((*mixed)[1].num_rows, 23);
}

TEST(EngineStepTest, BadStepsFailCleanlyAndAdvanceNothing) {
  auto engine = testing::MakeTinyEngine();
  ASSERT_TRUE(engine->AddSequence(1).ok());
  ASSERT_TRUE(engine->Step({{1, testing::Ids(10, 1), StepPhase::kPrefill, LogitRows::kLast}}).ok());
  const int vocab = engine->config().vocab_size;
  EXPECT_EQ(engine->Step({{1, {vocab}, StepPhase::kDecode, LogitRows::kLast}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Step({{1, {-1}, StepPhase::kDecode, LogitRows::kLast}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Step({{1, {}, StepPhase::kPrefill, LogitRows::kLast}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Step({{1, {1, 2}, StepPhase::kDecode, LogitRows::kLast}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine
                ->Step({{1, {1}, StepPhase::kDecode, LogitRows::kLast},
                        {1, {2}, StepPhase::kDecode, LogitRows::kLast}})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Step({{99, {1}, StepPhase::kDecode, LogitRows::kLast}}).status().code(),
            absl::StatusCode::kNotFound);
  const int context = engine->config().max_position_embeddings;
  EXPECT_EQ(engine->Step({{1, testing::Ids(context, 3), StepPhase::kPrefill, LogitRows::kLast}})
                .status()
                .code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(*engine->SequenceLength(1), 10);
}

TEST(EngineStepTest, FullKvCacheIsResourceExhaustedAndLeaksNothing) {
  auto engine = testing::MakeTinyEngine(/*dense_pages=*/4);  // 64 tokens at page size 16
  ASSERT_TRUE(engine->AddSequence(1).ok());
  ASSERT_TRUE(engine->AddSequence(2).ok());
  ASSERT_TRUE(engine->Step({{1, testing::Ids(40, 1), StepPhase::kPrefill, LogitRows::kLast}}).ok());
  EXPECT_EQ(engine->Step({{2, testing::Ids(40, 2), StepPhase::kPrefill, LogitRows::kLast}})
                .status()
                .code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(*engine->SequenceLength(2), 0);
  ASSERT_TRUE(engine->FreeSequence(1).ok());
  ASSERT_TRUE(engine->FreeSequence(2).ok());
  EXPECT_EQ(engine->kv_store().tables().dense_allocator().num_used(), 0);
}

TEST(EngineCreateTest, KvCacheStaysWithinItsByteBudget) {
  const ModelConfig config = TinySyntheticConfig();
  EngineOptions options;
  options.attention = SparseAttentionConfig::Dense();
  options.max_kv_cache_bytes = 1 << 20;
  auto engine = Engine::Create(*MakeSyntheticWeights(config, 1), options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  // K + V per page: layers x KV heads x page x head_dim floats, plus kmax/kmin.
  const int64_t page_bytes = int64_t{4} * config.num_layers * config.num_kv_heads *
                             config.head_dim * (2 * 64 + 2 * (64 / 16));
  const int64_t pages = (*engine)->kv_store().tables().dense_allocator().num_pages();
  EXPECT_GT(pages, 0);
  EXPECT_LE(pages * page_bytes, 1 << 20);
  EXPECT_GT((pages + 1) * page_bytes, 1 << 20);
  options.max_kv_cache_bytes = 100;
  EXPECT_EQ(Engine::Create(*MakeSyntheticWeights(config, 1), options).status().code(),
            absl::StatusCode::kResourceExhausted);
}

TEST(EngineCreateTest, GpuMemoryUtilizationMustBeAFractionAndBytesNonNegative) {
  for (double fraction : {0.0, -0.5, 1.01, std::nan("")}) {
    EngineOptions options;
    options.gpu_memory_utilization = fraction;
    const absl::Status status =
        Engine::Create(*MakeSyntheticWeights(TinySyntheticConfig(), 1), options).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << fraction;
    EXPECT_NE(status.message().find("gpu_memory_utilization"), std::string::npos);
  }
  EngineOptions options;
  options.gpu_memory_utilization = 1.0;
  EXPECT_TRUE(Engine::Create(*MakeSyntheticWeights(TinySyntheticConfig(), 1), options).ok());
  options.max_kv_cache_bytes = -1;
  EXPECT_EQ(
      Engine::Create(*MakeSyntheticWeights(TinySyntheticConfig(), 1), options).status().code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(KvBytesFromFreeMemoryTest, TakesTheFractionLeavingTheReserve) {
  constexpr int64_t kGiB = int64_t{1} << 30;
  EXPECT_EQ(KvBytesFromFreeMemory(100 * kGiB, 0.9, kGiB / 2), 90 * kGiB);
  EXPECT_EQ(KvBytesFromFreeMemory(100 * kGiB, 0.5, kGiB / 2), 50 * kGiB);
  // At 1.0 the reserve still stays free for the workspaces ops allocate later.
  EXPECT_EQ(KvBytesFromFreeMemory(100 * kGiB, 1.0, kGiB / 2), 100 * kGiB - kGiB / 2);
  EXPECT_EQ(KvBytesFromFreeMemory(kGiB / 4, 0.9, kGiB / 2), 0);
}

TEST(EngineCreateTest, SlidingWindowModelsServeContextsUpToTheWindow) {
  ModelConfig config = TinySyntheticConfig();
  config.model_type = "mistral";
  config.sliding_window = 64;
  auto engine = Engine::Create(*MakeSyntheticWeights(config, 1), EngineOptions{});
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->config().max_position_embeddings, 64);
  ASSERT_TRUE((*engine)->AddSequence(1).ok());
  EXPECT_TRUE((*engine)
                  ->Step({{1, std::vector<int32_t>(64, 5), StepPhase::kPrefill, LogitRows::kLast}})
                  .ok());
  EXPECT_EQ((*engine)->Step({{1, {5}, StepPhase::kDecode, LogitRows::kLast}}).status().code(),
            absl::StatusCode::kOutOfRange);
}

// Logits cross to the host only when asked; the sampled token is the backend's pick from
// the same logits.
TEST(EngineStepTest, SamplesInTheBackendAndReturnsLogitsOnlyWhenAsked) {
  auto engine = testing::MakeTinyEngine();
  ASSERT_TRUE(engine->AddSequence(1).ok());
  StepInput input{1, testing::Ids(30, 4), StepPhase::kPrefill, LogitRows::kNone};
  input.sample = true;
  input.sampling.temperature = 0.8f;
  input.sampling.seed = 11;
  input.sampling.draw = 3;
  input.sampling.top_logprobs = 2;
  auto quiet = engine->Step({input});
  ASSERT_TRUE(quiet.ok()) << quiet.status();
  EXPECT_TRUE((*quiet)[0].logits.empty());
  EXPECT_EQ((*quiet)[0].num_rows, 0);
  ASSERT_TRUE((*quiet)[0].sampled);
  EXPECT_EQ((*quiet)[0].top_logprobs.size(), 2u);
  auto other = testing::MakeTinyEngine();
  ASSERT_TRUE(other->AddSequence(1).ok());
  input.logits = LogitRows::kLast;
  auto loud = other->Step({input});
  ASSERT_TRUE(loud.ok());
  ASSERT_EQ((*loud)[0].logits.size(), static_cast<size_t>(engine->config().vocab_size));
  EXPECT_EQ((*loud)[0].token, (*quiet)[0].token);
  EXPECT_EQ((*loud)[0].token, cpu::SampleRow((*loud)[0].logits, input.sampling));
  EXPECT_EQ((*loud)[0].top_logprobs, (*quiet)[0].top_logprobs);
  EXPECT_LE((*quiet)[0].top_logprobs[1].second, (*quiet)[0].top_logprobs[0].second);
}

// A sequence swapped out (its KV exported, its pages reused by another sequence) and back
// in decodes exactly as if it had never left, selections and streaming ring included.
TEST(EngineStepTest, SwappedOutSequenceResumesBitwise) {
  EngineOptions options;
  options.num_threads = 2;
  options.attention.page_size = 16;
  options.attention.sink = 16;
  options.attention.prefill_local = 64;
  options.attention.decode_local = 32;
  options.attention.token_budget = 64;
  options.attention.reuse_interval = 3;
  auto make = [&] {
    auto engine = Engine::Create(*MakeSyntheticWeights(TinySyntheticConfig(), 3), options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    return *std::move(engine);
  };
  auto steady = make();
  auto swapped = make();
  std::vector<std::vector<float>> expected, got;
  for (Engine* engine : {steady.get(), swapped.get()}) {
    ASSERT_TRUE(engine->AddSequence(1).ok());
    ASSERT_TRUE(engine->Step({{1, testing::Ids(150, 6), StepPhase::kPrefill}}).ok());
  }
  for (int step = 0; step < 20; ++step) {
    if (step == 7) {
      auto snapshot = swapped->SwapOut(1);
      ASSERT_TRUE(snapshot.ok()) << snapshot.status();
      EXPECT_EQ(swapped->kv_store().tables().dense_allocator().num_used(), 0);
      ASSERT_TRUE(swapped->AddSequence(2).ok());
      ASSERT_TRUE(swapped->Step({{2, testing::Ids(120, 9), StepPhase::kPrefill}}).ok());
      ASSERT_TRUE(swapped->SwapIn(1, *snapshot).ok());
    }
    const StepInput input{1, {(step * 13 + 2) % 500}, StepPhase::kDecode, LogitRows::kLast};
    auto a = steady->Step({input});
    auto b = swapped->Step({input});
    ASSERT_TRUE(a.ok() && b.ok());
    ASSERT_EQ((*a)[0].logits, (*b)[0].logits) << "decode step " << step;
  }
  EXPECT_GT(swapped->selection_reuses(), 0);
}

}  // namespace
}  // namespace lserve
