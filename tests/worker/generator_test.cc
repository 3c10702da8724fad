// Engine step and generation behaviour on the built-in synthetic model.
#include "worker/generator.h"

#include <vector>

#include "gtest/gtest.h"
#include "tests/worker/test_util.h"
#include "worker/model/synthetic_model.h"

namespace lserve {
namespace {

std::unique_ptr<Engine> MakeEngine(int64_t dense_pages = 0) {
  EngineOptions options;
  options.num_threads = 2;
  options.attention.page_size = 16;  // LServe defaults otherwise: streaming heads on
  options.num_dense_pages = dense_pages;
  options.max_sequences = 4;
  auto weights = MakeSyntheticWeights(TinySyntheticConfig(), 3);
  EXPECT_TRUE(weights.ok()) << weights.status();
  auto engine = Engine::Create(*std::move(weights), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return *std::move(engine);
}

std::vector<int32_t> Ids(int n, int salt) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back((i * 37 + salt * 11 + 5) % 500 + 3);
  return ids;
}

TEST(EngineStepTest, MixedBatchEqualsSequencesRunAlone) {
  auto batched = MakeEngine();
  auto alone = MakeEngine();
  // Sequence 1 decodes after a 40-token prefill while sequence 2 prefills 23 tokens.
  for (auto* engine : {batched.get(), alone.get()}) {
    ASSERT_TRUE(engine->AddSequence(1).ok());
    ASSERT_TRUE(engine->AddSequence(2).ok());
    ASSERT_TRUE(engine->Step({{1, Ids(40, 1), StepPhase::kPrefill, false}}).ok());
  }
  auto mixed = batched->Step(
      {{1, {7}, StepPhase::kDecode, false}, {2, Ids(23, 2), StepPhase::kPrefill, true}});
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  auto one = alone->Step({{1, {7}, StepPhase::kDecode, false}});
  auto two = alone->Step({{2, Ids(23, 2), StepPhase::kPrefill, true}});
  ASSERT_TRUE(one.ok() && two.ok());
  EXPECT_LE(testing::RelativeMaxError((*mixed)[0].logits, (*one)[0].logits), 1e-5);
  EXPECT_LE(testing::RelativeMaxError((*mixed)[1].logits, (*two)[0].logits), 1e-5);
  EXPECT_EQ((*mixed)[1].num_rows, 23);
}

TEST(EngineStepTest, BadStepsFailCleanlyAndAdvanceNothing) {
  auto engine = MakeEngine();
  ASSERT_TRUE(engine->AddSequence(1).ok());
  ASSERT_TRUE(engine->Step({{1, Ids(10, 1), StepPhase::kPrefill, false}}).ok());
  const int vocab = engine->config().vocab_size;
  EXPECT_EQ(engine->Step({{1, {vocab}, StepPhase::kDecode, false}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Step({{1, {-1}, StepPhase::kDecode, false}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Step({{1, {}, StepPhase::kPrefill, false}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Step({{1, {1, 2}, StepPhase::kDecode, false}}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Step({{1, {1}, StepPhase::kDecode, false}, {1, {2}, StepPhase::kDecode, false}})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(engine->Step({{99, {1}, StepPhase::kDecode, false}}).status().code(),
            absl::StatusCode::kNotFound);
  const int context = engine->config().max_position_embeddings;
  EXPECT_EQ(engine->Step({{1, Ids(context, 3), StepPhase::kPrefill, false}}).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(*engine->SequenceLength(1), 10);
}

TEST(EngineStepTest, FullKvCacheIsResourceExhaustedAndLeaksNothing) {
  auto engine = MakeEngine(/*dense_pages=*/4);  // 64 tokens at page size 16
  ASSERT_TRUE(engine->AddSequence(1).ok());
  ASSERT_TRUE(engine->AddSequence(2).ok());
  ASSERT_TRUE(engine->Step({{1, Ids(40, 1), StepPhase::kPrefill, false}}).ok());
  EXPECT_EQ(engine->Step({{2, Ids(40, 2), StepPhase::kPrefill, false}}).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(*engine->SequenceLength(2), 0);
  ASSERT_TRUE(engine->FreeSequence(1).ok());
  ASSERT_TRUE(engine->FreeSequence(2).ok());
  EXPECT_EQ(engine->kv_cache().dense_allocator().num_used(), 0);
}

TEST(GeneratorTest, BadRequestsFailAloneWithClearErrors) {
  auto engine = MakeEngine();
  std::vector<GenerationRequest> requests(5);
  for (auto& r : requests) r.prompt = Ids(8, 1);
  requests[1].prompt = {};
  requests[2].prompt = {1, 100000};
  requests[3].sampling.max_tokens = engine->config().max_position_embeddings;
  requests[4].sampling.temperature = -2.0f;
  const auto results = Generate(*engine, requests, GeneratorOptions{});
  EXPECT_TRUE(results[0].status.ok());
  EXPECT_EQ(results[0].tokens.size(), 16u);
  EXPECT_EQ(results[1].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(results[2].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(results[3].status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(results[4].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(results[2].status.message().find("100000"), std::string::npos);
  EXPECT_EQ(engine->kv_cache().dense_allocator().num_used(), 0);
}

TEST(GeneratorTest, StopsAtStopTokenAndAtMaxTokens) {
  auto engine = MakeEngine();
  GenerationRequest request;
  request.prompt = Ids(12, 4);
  request.sampling.max_tokens = 6;
  const auto free_run = Generate(*engine, {request}, GeneratorOptions{});
  ASSERT_EQ(free_run[0].tokens.size(), 6u);
  EXPECT_EQ(free_run[0].finish_reason, FinishReason::kLength);
  request.sampling.stop_token_ids = {free_run[0].tokens[2]};
  const auto stopped = Generate(*engine, {request}, GeneratorOptions{});
  EXPECT_EQ(stopped[0].finish_reason, FinishReason::kStop);
  EXPECT_EQ(stopped[0].tokens.back(), free_run[0].tokens[2]);
  EXPECT_LE(stopped[0].tokens.size(), 3u);
}

TEST(GeneratorTest, SeededSamplingIsReproducibleAcrossBatching) {
  auto engine = MakeEngine();
  std::vector<GenerationRequest> requests(3);
  for (int i = 0; i < 3; ++i) {
    requests[i].prompt = Ids(5 + 9 * i, i);
    requests[i].sampling.temperature = 0.9f;
    requests[i].sampling.top_p = 0.95f;
    requests[i].sampling.seed = 100 + i;
    requests[i].sampling.max_tokens = 10;
  }
  GeneratorOptions batched;
  batched.prefill_chunk = 4;
  GeneratorOptions serial;
  serial.max_running = 1;
  const auto a = Generate(*engine, requests, batched);
  const auto b = Generate(*engine, requests, serial);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(a[i].tokens, b[i].tokens) << i;
  requests[0].sampling.seed = 7;
  EXPECT_NE(Generate(*engine, {requests[0]}, serial)[0].tokens, a[0].tokens);
}

TEST(GeneratorTest, StreamsEveryTokenThroughTheCallback) {
  auto engine = MakeEngine();
  GenerationRequest request;
  request.prompt = Ids(3, 9);
  std::vector<int32_t> streamed;
  const auto results = Generate(*engine, {request}, GeneratorOptions{},
                                [&](size_t, int32_t token) { streamed.push_back(token); });
  EXPECT_EQ(streamed, results[0].tokens);
}

}  // namespace
}  // namespace lserve

namespace lserve {
namespace {

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
  const int64_t pages = (*engine)->kv_cache().dense_allocator().num_pages();
  EXPECT_GT(pages, 0);
  EXPECT_LE(pages * page_bytes, 1 << 20);
  EXPECT_GT((pages + 1) * page_bytes, 1 << 20);
  options.max_kv_cache_bytes = 100;
  EXPECT_EQ(Engine::Create(*MakeSyntheticWeights(config, 1), options).status().code(),
            absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace lserve

namespace lserve {
namespace {

TEST(GeneratorOptionsTest, InvalidOptionsFailEveryRequestInsteadOfHanging) {
  EngineOptions options;
  options.max_sequences = 2;
  auto engine = Engine::Create(*MakeSyntheticWeights(TinySyntheticConfig(), 1), options);
  ASSERT_TRUE(engine.ok());
  GenerationRequest request;
  request.prompt = {1, 2, 3};
  for (GeneratorOptions bad :
       {GeneratorOptions{0, 0, 8}, GeneratorOptions{2048, 0, 0}, GeneratorOptions{2048, -1, 8}}) {
    const auto results = Generate(**engine, {request, request}, bad);
    for (const auto& r : results) EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(GeneratorOptionsTest, StepBudgetLargerThanTheEnginesChunkStillWorks) {
  EngineOptions options;
  options.max_chunk_tokens = 16;  // the streaming ring holds 16-token chunks at most
  options.attention.page_size = 16;
  auto engine = Engine::Create(*MakeSyntheticWeights(TinySyntheticConfig(), 1), options);
  ASSERT_TRUE(engine.ok());
  GenerationRequest request;
  request.prompt = std::vector<int32_t>(100, 7);
  request.sampling.max_tokens = 3;
  const auto results = Generate(**engine, {request}, GeneratorOptions{});
  EXPECT_TRUE(results[0].status.ok()) << results[0].status;
  EXPECT_EQ(results[0].tokens.size(), 3u);
}

TEST(GeneratorOptionsTest, AllStreamingModelServesSeveralLongSequences) {
  EngineOptions options;
  options.attention.streaming_ratio = 1.0f;
  options.attention.page_size = 16;
  options.attention.sink = 16;
  options.attention.prefill_local = 256;
  options.attention.decode_local = 64;
  options.max_sequences = 3;
  auto engine = Engine::Create(*MakeSyntheticWeights(TinySyntheticConfig(), 1), options);
  ASSERT_TRUE(engine.ok());
  std::vector<GenerationRequest> requests(3);
  for (auto& r : requests) {
    r.prompt = std::vector<int32_t>(2000, 9);
    r.sampling.max_tokens = 4;
  }
  const auto results = Generate(**engine, requests, GeneratorOptions{});
  for (const auto& r : results) EXPECT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ((*engine)->kv_cache().streaming_allocator().num_used(), 0);
}

}  // namespace
}  // namespace lserve

namespace lserve {
namespace {

TEST(EngineCreateTest, SlidingWindowModelsServeContextsUpToTheWindow) {
  ModelConfig config = TinySyntheticConfig();
  config.model_type = "mistral";
  config.sliding_window = 64;
  auto engine = Engine::Create(*MakeSyntheticWeights(config, 1), EngineOptions{});
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ((*engine)->config().max_position_embeddings, 64);
  ASSERT_TRUE((*engine)->AddSequence(1).ok());
  EXPECT_TRUE((*engine)->Step({{1, std::vector<int32_t>(64, 5), StepPhase::kPrefill, false}}).ok());
  EXPECT_EQ((*engine)->Step({{1, {5}, StepPhase::kDecode, false}}).status().code(),
            absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace lserve
