// The scheduler without a network: admission under the token budget and the KV pages,
// preemption (recompute and swap) with resumed output equal to an uninterrupted run,
// priorities, deadlines, cancellation, the bounded queue, and thread safety.
#include "worker/scheduler/scheduler.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/worker/engine_test_util.h"
#include "tests/worker/scheduler/scheduler_test_util.h"

namespace lserve {
namespace {

using testing::Greedy;
using testing::Ids;
using testing::MakeTinyEngine;
using testing::Outcome;
using testing::RunAll;

// Each request alone on an engine with room to spare.
std::vector<std::vector<int32_t>> AloneTokens(const std::vector<GenerationRequest>& requests,
                                              const EngineOptions* options = nullptr) {
  std::vector<std::vector<int32_t>> tokens;
  for (const GenerationRequest& request : requests) {
    std::unique_ptr<Engine> engine;
    if (options != nullptr) {
      engine = *Engine::Create(*MakeSyntheticWeights(TinySyntheticConfig(), 3), *options);
    } else {
      engine = MakeTinyEngine();
    }
    auto scheduler = *Scheduler::Create(engine.get(), SchedulerOptions{});
    const RequestId id = *scheduler->Submit(request);
    tokens.push_back(RunAll(*scheduler)[id].tokens);
  }
  return tokens;
}

TEST(SchedulerTest, StepsStayWithinTheTokenBudgetAndFinishEveryRequest) {
  auto engine = MakeTinyEngine(/*dense_pages=*/12);
  SchedulerOptions options;
  options.max_step_tokens = 24;
  auto scheduler = *Scheduler::Create(engine.get(), options);
  std::vector<GenerationRequest> requests;
  std::vector<RequestId> ids;
  for (int i = 0; i < 6; ++i) {
    requests.push_back(Greedy(Ids(40, i), 8));
    ids.push_back(*scheduler->Submit(requests.back()));
  }
  std::map<RequestId, Outcome> out;
  int64_t last_tokens = 0;
  int steps = 0;
  while (scheduler->HasWork() && steps < 1000) {
    testing::Collect(scheduler->Step(), &out);
    const SchedulerStats stats = scheduler->stats();
    ASSERT_LE(stats.step_tokens - last_tokens, 24) << "step " << steps;
    last_tokens = stats.step_tokens;
    ASSERT_LE(engine->kv_store().Usage().dense_used, 12);
    ++steps;
  }
  // 6 x 40 prompt tokens plus 6 x 7 decode tokens at 24 per step at best.
  EXPECT_GE(steps, (6 * 40 + 6 * 7) / 24);
  const auto expected = AloneTokens(requests);
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(out[ids[i]].reason, FinishReason::kLength);
    EXPECT_EQ(out[ids[i]].tokens, expected[i]) << "request " << i;
  }
  EXPECT_EQ(engine->kv_store().tables().dense_allocator().num_used(), 0);
}

// Three requests that cannot all hold their KV at once: the newest is preempted and
// recomputed, and every greedy output equals its uninterrupted run.
TEST(SchedulerTest, RecomputedRequestsGiveTheTokensOfAnUninterruptedRun) {
  auto engine = MakeTinyEngine(/*dense_pages=*/10);
  auto scheduler = *Scheduler::Create(engine.get(), SchedulerOptions{});
  std::vector<GenerationRequest> requests;
  std::vector<RequestId> ids;
  for (int i = 0; i < 3; ++i) {
    requests.push_back(Greedy(Ids(30, 10 + i), 40));
    ids.push_back(*scheduler->Submit(requests.back()));
  }
  auto out = RunAll(*scheduler);
  EXPECT_GT(scheduler->stats().preemptions, 0);
  int preempted = 0;
  const auto expected = AloneTokens(requests);
  for (size_t i = 0; i < ids.size(); ++i) {
    ASSERT_TRUE(out[ids[i]].status.ok()) << out[ids[i]].status;
    EXPECT_EQ(out[ids[i]].tokens, expected[i]) << "request " << i;
    preempted += out[ids[i]].timings.preemptions;
  }
  EXPECT_GT(preempted, 0);
  EXPECT_EQ(engine->kv_store().tables().dense_allocator().num_used(), 0);
  EXPECT_EQ(engine->kv_store().tables().streaming_allocator().num_used(), 0);
}

// Swapping keeps the KV, the streaming ring and the page selections, so a swapped request
// resumes exactly even with windows and a budget far smaller than its context.
TEST(SchedulerTest, SwappedRequestsResumeExactlyPastTheWindows) {
  EngineOptions options;
  options.num_threads = 2;
  options.attention.page_size = 16;
  options.attention.sink = 16;
  options.attention.prefill_local = 32;
  options.attention.decode_local = 16;
  options.attention.token_budget = 32;
  options.attention.reuse_interval = 3;
  options.max_chunk_tokens = 32;
  options.max_sequences = 3;
  std::vector<GenerationRequest> requests;
  for (int i = 0; i < 3; ++i) requests.push_back(Greedy(Ids(30, 20 + i), 60));
  const auto expected = AloneTokens(requests, &options);
  options.num_dense_pages = 12;
  auto engine = *Engine::Create(*MakeSyntheticWeights(TinySyntheticConfig(), 3), options);
  SchedulerOptions scheduling;
  scheduling.preemption = PreemptionMode::kSwap;
  auto scheduler = *Scheduler::Create(engine.get(), scheduling);
  std::vector<RequestId> ids;
  for (const auto& request : requests) ids.push_back(*scheduler->Submit(request));
  auto out = RunAll(*scheduler);
  EXPECT_GT(scheduler->stats().swaps_out, 0);
  EXPECT_EQ(scheduler->stats().swaps_in, scheduler->stats().swaps_out);
  for (size_t i = 0; i < ids.size(); ++i) {
    ASSERT_TRUE(out[ids[i]].status.ok()) << out[ids[i]].status;
    EXPECT_EQ(out[ids[i]].tokens, expected[i]) << "request " << i;
  }
  EXPECT_EQ(engine->kv_store().tables().dense_allocator().num_used(), 0);
}

TEST(SchedulerTest, HigherPriorityRunsFirstAndTakesThePlaceOfLowerOnes) {
  auto engine = MakeTinyEngine();
  SchedulerOptions options;
  options.max_running = 1;
  auto scheduler = *Scheduler::Create(engine.get(), options);
  const RequestId low = *scheduler->Submit(Greedy(Ids(20, 1), 30, /*priority=*/0));
  std::map<RequestId, Outcome> out;
  testing::Collect(scheduler->Step(), &out);  // low starts alone
  const RequestId high = *scheduler->Submit(Greedy(Ids(20, 2), 5, /*priority=*/3));
  const RequestId middle = *scheduler->Submit(Greedy(Ids(20, 3), 5, /*priority=*/1));
  std::vector<RequestId> finish_order;
  while (scheduler->HasWork()) {
    for (const RequestEvent& event : scheduler->Step()) {
      if (event.finished) finish_order.push_back(event.id);
    }
  }
  EXPECT_EQ(finish_order, (std::vector<RequestId>{high, middle, low}));
  EXPECT_GE(scheduler->stats().preemptions, 1);  // low made room for high
}

TEST(SchedulerTest, DeadlinesFinishRequestsAndFreeTheirPages) {
  auto engine = MakeTinyEngine();
  auto scheduler = *Scheduler::Create(engine.get(), SchedulerOptions{});
  GenerationRequest late = Greedy(Ids(10, 1), 10);
  late.deadline = SteadyClock::now() - std::chrono::milliseconds(1);
  GenerationRequest slow = Greedy(Ids(10, 2), 4000);
  slow.deadline = SteadyClock::now() + std::chrono::milliseconds(50);
  const RequestId late_id = *scheduler->Submit(late);
  const RequestId slow_id = *scheduler->Submit(slow);
  auto out = RunAll(*scheduler);
  EXPECT_EQ(out[late_id].reason, FinishReason::kDeadline);
  EXPECT_EQ(out[late_id].status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(out[late_id].tokens.empty());
  EXPECT_EQ(out[slow_id].reason, FinishReason::kDeadline);
  EXPECT_GT(out[slow_id].tokens.size(), 0u);
  EXPECT_LT(out[slow_id].tokens.size(), 4000u);
  EXPECT_EQ(engine->kv_store().tables().dense_allocator().num_used(), 0);
}

TEST(SchedulerTest, CancellationFromAnotherThreadReturnsKvUsageToZero) {
  auto engine = MakeTinyEngine();
  auto scheduler = *Scheduler::Create(engine.get(), SchedulerOptions{});
  std::vector<RequestId> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(*scheduler->Submit(Greedy(Ids(50, i), 1000)));
  std::map<RequestId, Outcome> out;
  for (int i = 0; i < 8; ++i) testing::Collect(scheduler->Step(), &out);
  EXPECT_GT(engine->kv_store().Usage().dense_used, 0);
  std::thread canceller([&] {
    for (RequestId id : ids) EXPECT_TRUE(scheduler->Abort(id).ok());
  });
  canceller.join();
  testing::Collect(scheduler->Step(), &out);
  for (RequestId id : ids) {
    EXPECT_TRUE(out[id].finished);
    EXPECT_EQ(out[id].reason, FinishReason::kAborted);
    EXPECT_EQ(out[id].status.code(), absl::StatusCode::kCancelled);
  }
  const KvUsage usage = engine->kv_store().Usage();
  EXPECT_EQ(usage.dense_used, 0);
  EXPECT_EQ(usage.streaming_used, 0);
  EXPECT_EQ(engine->kv_store().tables().dense_allocator().num_used(), 0);
  EXPECT_EQ(engine->kv_store().tables().streaming_allocator().num_used(), 0);
  EXPECT_FALSE(scheduler->HasWork());
  EXPECT_EQ(scheduler->Abort(ids[0]).code(), absl::StatusCode::kNotFound);
}

TEST(SchedulerTest, FullWaitingQueueIsResourceExhaustedUntilItDrains) {
  auto engine = MakeTinyEngine();
  SchedulerOptions options;
  options.max_waiting = 2;
  options.max_running = 1;
  auto scheduler = *Scheduler::Create(engine.get(), options);
  ASSERT_TRUE(scheduler->Submit(Greedy(Ids(5, 1), 3)).ok());
  ASSERT_TRUE(scheduler->Submit(Greedy(Ids(5, 2), 3)).ok());
  const auto refused = scheduler->Submit(Greedy(Ids(5, 3), 3));
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("retry"), std::string::npos);
  scheduler->Step();  // one request leaves the queue to run
  EXPECT_TRUE(scheduler->Submit(Greedy(Ids(5, 3), 3)).ok());
  RunAll(*scheduler);
}

TEST(SchedulerTest, BadRequestsAreRefusedAtSubmit) {
  auto engine = MakeTinyEngine(/*dense_pages=*/8);
  auto scheduler = *Scheduler::Create(engine.get(), SchedulerOptions{});
  EXPECT_EQ(scheduler->Submit(Greedy({}, 3)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(scheduler->Submit(Greedy({1, 512}, 3)).status().code(),
            absl::StatusCode::kInvalidArgument);
  GenerationRequest bad = Greedy({1, 2}, 3);
  bad.sampling.logprobs = 21;
  EXPECT_EQ(scheduler->Submit(bad).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(scheduler->Submit(Greedy({1, 2}, 4095)).status().code(), absl::StatusCode::kOutOfRange);
  // 8 pages of 16 tokens can never hold 200 tokens.
  EXPECT_EQ(scheduler->Submit(Greedy(Ids(150, 1), 50)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_FALSE(scheduler->HasWork());
}

// Submit and Abort from several threads while the engine thread steps.
TEST(SchedulerTest, SubmitAndAbortAreSafeFromManyThreads) {
  auto engine = MakeTinyEngine();
  SchedulerOptions options;
  options.max_running = 6;
  auto scheduler = *Scheduler::Create(engine.get(), options);
  std::atomic<int> submitted{0}, producers_done{0};
  std::vector<std::thread> producers;
  for (int t = 0; t < 3; ++t) {
    producers.emplace_back([&, t] {
      for (int i = 0; i < 12; ++i) {
        auto id = scheduler->Submit(Greedy(Ids(8 + i, t * 50 + i), 6));
        if (!id.ok()) continue;
        ++submitted;
        if (i % 3 == 0) (void)scheduler->Abort(*id);
      }
      ++producers_done;
    });
  }
  std::map<RequestId, Outcome> out;
  // Bounded in time, not steps: idle steps are cheap, and the producers may start late.
  const auto give_up = SteadyClock::now() + std::chrono::seconds(60);
  while (SteadyClock::now() < give_up) {
    const bool producers_finished = producers_done.load() == 3;
    testing::Collect(scheduler->Step(), &out);
    if (producers_finished && !scheduler->HasWork()) break;
  }
  for (auto& thread : producers) thread.join();
  EXPECT_EQ(static_cast<int>(out.size()), submitted.load());
  for (const auto& [id, outcome] : out) EXPECT_TRUE(outcome.finished) << id;
  EXPECT_EQ(engine->kv_store().tables().dense_allocator().num_used(), 0);
}

}  // namespace
}  // namespace lserve
