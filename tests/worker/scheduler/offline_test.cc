// Offline generation through the scheduler on the built-in synthetic model.
#include "worker/scheduler/offline.h"

#include <vector>

#include "gtest/gtest.h"
#include "tests/worker/engine_test_util.h"
#include "tests/worker/test_util.h"
#include "worker/model/synthetic_model.h"

namespace lserve {
namespace {

TEST(GeneratorTest, BadRequestsFailAloneWithClearErrors) {
  auto engine = testing::MakeTinyEngine();
  std::vector<GenerationRequest> requests(5);
  for (auto& r : requests) r.prompt = testing::Ids(8, 1);
  requests[1].prompt = {};
  requests[2].prompt = {1, 100000};
  requests[3].sampling.max_tokens = engine->config().max_position_embeddings;
  requests[4].sampling.temperature = -2.0f;
  const auto results = Generate(*engine, requests, SchedulerOptions{});
  EXPECT_TRUE(results[0].status.ok());
  EXPECT_EQ(results[0].tokens.size(), 16u);
  EXPECT_EQ(results[1].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(results[2].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(results[3].status.code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(results[4].status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(results[2].status.message().find("100000"), std::string::npos);
  EXPECT_EQ(engine->kv_store().tables().dense_allocator().num_used(), 0);
}

TEST(GeneratorTest, StopsAtStopTokenAndAtMaxTokens) {
  auto engine = testing::MakeTinyEngine();
  GenerationRequest request;
  request.prompt = testing::Ids(12, 4);
  request.sampling.max_tokens = 6;
  const auto free_run = Generate(*engine, {request}, SchedulerOptions{});
  ASSERT_EQ(free_run[0].tokens.size(), 6u);
  EXPECT_EQ(free_run[0].finish_reason, FinishReason::kLength);
  request.sampling.stop_token_ids = {free_run[0].tokens[2]};
  const auto stopped = Generate(*engine, {request}, SchedulerOptions{});
  EXPECT_EQ(stopped[0].finish_reason, FinishReason::kStop);
  EXPECT_EQ(stopped[0].tokens.back(), free_run[0].tokens[2]);
  EXPECT_LE(stopped[0].tokens.size(), 3u);
}

TEST(GeneratorTest, SeededSamplingIsReproducibleAcrossBatching) {
  auto engine = testing::MakeTinyEngine();
  std::vector<GenerationRequest> requests(3);
  for (int i = 0; i < 3; ++i) {
    requests[i].prompt = testing::Ids(5 + 9 * i, i);
    requests[i].sampling.temperature = 0.9f;
    requests[i].sampling.top_p = 0.95f;
    requests[i].sampling.seed = 100 + i;
    requests[i].sampling.max_tokens = 10;
  }
  SchedulerOptions batched;
  batched.prefill_chunk = 4;
  SchedulerOptions serial;
  serial.max_running = 1;
  const auto a = Generate(*engine, requests, batched);
  const auto b = Generate(*engine, requests, serial);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(a[i].tokens, b[i].tokens) << i;
  requests[0].sampling.seed = 7;
  EXPECT_NE(Generate(*engine, {requests[0]}, serial)[0].tokens, a[0].tokens);
}

TEST(GeneratorTest, StreamsEveryTokenThroughTheCallback) {
  auto engine = testing::MakeTinyEngine();
  GenerationRequest request;
  request.prompt = testing::Ids(3, 9);
  std::vector<int32_t> streamed;
  const auto results = Generate(*engine, {request}, SchedulerOptions{},
                                [&](size_t, int32_t token) { streamed.push_back(token); });
  EXPECT_EQ(streamed, results[0].tokens);
}

TEST(SchedulerOptionsTest, InvalidOptionsFailEveryRequestInsteadOfHanging) {
  EngineOptions options;
  options.max_sequences = 2;
  auto engine = Engine::Create(*MakeSyntheticWeights(TinySyntheticConfig(), 1), options);
  ASSERT_TRUE(engine.ok());
  GenerationRequest request;
  request.prompt = {1, 2, 3};
  for (SchedulerOptions bad :
       {SchedulerOptions{0, 0, 8}, SchedulerOptions{2048, 0, 0}, SchedulerOptions{2048, -1, 8}}) {
    const auto results = Generate(**engine, {request, request}, bad);
    for (const auto& r : results) EXPECT_EQ(r.status.code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(SchedulerOptionsTest, StepBudgetLargerThanTheEnginesChunkStillWorks) {
  EngineOptions options;
  options.max_chunk_tokens = 16;  // the streaming ring holds 16-token chunks at most
  options.attention.page_size = 16;
  auto engine = Engine::Create(*MakeSyntheticWeights(TinySyntheticConfig(), 1), options);
  ASSERT_TRUE(engine.ok());
  GenerationRequest request;
  request.prompt = std::vector<int32_t>(100, 7);
  request.sampling.max_tokens = 3;
  const auto results = Generate(**engine, {request}, SchedulerOptions{});
  EXPECT_TRUE(results[0].status.ok()) << results[0].status;
  EXPECT_EQ(results[0].tokens.size(), 3u);
}

TEST(SchedulerOptionsTest, AllStreamingModelServesSeveralLongSequences) {
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
  const auto results = Generate(**engine, requests, SchedulerOptions{});
  for (const auto& r : results) EXPECT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ((*engine)->kv_store().tables().streaming_allocator().num_used(), 0);
}

}  // namespace
}  // namespace lserve
