// Prefix caching through the scheduler: a hit computes only the suffix and changes nothing
// in the output; cached pages make room under memory pressure; and 10,000 random submit,
// abort and step operations over shared prefixes leave every reference count equal to its
// holders and no page in use.
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tests/worker/engine_test_util.h"
#include "tests/worker/scheduler/scheduler_test_util.h"
#include "worker/scheduler/scheduler.h"

namespace lserve {
namespace {

using testing::Greedy;
using testing::Ids;
using testing::Outcome;
using testing::RunAll;

EngineOptions Options(bool prefix_caching, int64_t dense_pages = 0) {
  EngineOptions options;
  options.num_threads = 2;
  options.attention.page_size = 16;
  // Small windows, so the cache must carry the ring's window and the sink.
  options.attention.sink = 16;
  options.attention.prefill_local = 48;
  options.attention.decode_local = 32;
  options.attention.token_budget = 64;
  options.max_chunk_tokens = 16;
  options.num_dense_pages = dense_pages;
  options.prefix_caching = prefix_caching;
  return options;
}

std::unique_ptr<Engine> MakeEngine(bool prefix_caching, int64_t dense_pages = 0) {
  return *Engine::Create(*MakeSyntheticWeights(TinySyntheticConfig(), 3),
                         Options(prefix_caching, dense_pages));
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

SchedulerOptions PageAlignedChunks() {
  SchedulerOptions options;
  options.prefill_chunk = 16;  // chunks on page boundaries, with or without a hit
  return options;
}

TEST(PrefixCachingTest, HitComputesOnlyTheSuffixAndGivesIdenticalOutput) {
  const std::vector<int32_t> shared = Ids(96, 1);  // past the 48-token prefill window
  const GenerationRequest first = Greedy(Concat(shared, Ids(20, 2)), 24);
  const GenerationRequest second = Greedy(Concat(shared, Ids(9, 3)), 24);
  auto cold = MakeEngine(false);
  auto cold_scheduler = *Scheduler::Create(cold.get(), PageAlignedChunks());
  const RequestId cold_id = *cold_scheduler->Submit(second);
  const Outcome expected = RunAll(*cold_scheduler)[cold_id];

  auto warm = MakeEngine(true);
  auto scheduler = *Scheduler::Create(warm.get(), PageAlignedChunks());
  const RequestId first_id = *scheduler->Submit(first);
  RunAll(*scheduler);
  const RequestId second_id = *scheduler->Submit(second);
  const Outcome hit = RunAll(*scheduler)[second_id];
  EXPECT_EQ(hit.timings.cached_prompt_tokens, 96);
  EXPECT_EQ(hit.timings.prefill_tokens, 9);  // the suffix only
  EXPECT_EQ(hit.tokens, expected.tokens);
  EXPECT_EQ(hit.logprobs, expected.logprobs);  // bitwise: same KV, same chunks
  EXPECT_EQ(expected.timings.prefill_tokens, 105);
  const PrefixCacheStats& stats = *&warm->kv_store().prefix_cache()->stats();
  EXPECT_EQ(stats.hits, 1);
  EXPECT_EQ(stats.hit_tokens, 96);
  (void)first_id;
  const KvUsage usage = warm->kv_store().Usage();
  EXPECT_EQ(usage.dense_used, 0);
  EXPECT_EQ(usage.streaming_used, 0);
  EXPECT_TRUE(warm->kv_store().CheckConsistency().ok());
}

TEST(PrefixCachingTest, CachedPagesAreEvictedUnderMemoryPressure) {
  auto engine = MakeEngine(true, /*dense_pages=*/24);
  auto scheduler = *Scheduler::Create(engine.get(), PageAlignedChunks());
  // Each prompt holds 7 full pages; three of them cannot stay cached in 24 pages beside a
  // running request.
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < 5; ++i) {
    prompts.push_back(Ids(120, 10 + i));
    const RequestId id = *scheduler->Submit(Greedy(prompts.back(), 4));
    auto out = RunAll(*scheduler);
    ASSERT_TRUE(out[id].status.ok()) << out[id].status;
  }
  const PrefixCacheStats& stats = engine->kv_store().prefix_cache()->stats();
  EXPECT_GT(stats.evicted_pages, 0);
  EXPECT_LE(engine->kv_store().Usage().dense_cached, 24);
  // The newest prompt is still cached, the oldest is gone.
  const RequestId newest = *scheduler->Submit(Greedy(prompts[4], 2));
  const RequestId oldest = *scheduler->Submit(Greedy(prompts[0], 2));
  auto out = RunAll(*scheduler);
  EXPECT_EQ(out[newest].timings.cached_prompt_tokens, 112);
  EXPECT_EQ(out[oldest].timings.cached_prompt_tokens, 0);
  EXPECT_TRUE(engine->kv_store().CheckConsistency().ok());
}

class RandomOperationsTest : public ::testing::TestWithParam<PreemptionMode> {};

TEST_P(RandomOperationsTest, SubmitAbortAndStepKeepReferenceCountsExact) {
  auto engine = MakeEngine(true, /*dense_pages=*/14);
  SchedulerOptions options;
  options.preemption = GetParam();
  options.max_running = 5;
  options.max_step_tokens = 48;
  options.max_waiting = 64;
  auto scheduler = *Scheduler::Create(engine.get(), options);
  std::mt19937 rng(2024);
  const std::vector<std::vector<int32_t>> bases = {Ids(64, 100), Ids(40, 101), Ids(17, 102)};
  std::vector<RequestId> live;
  std::map<RequestId, Outcome> out;
  int submits = 0, aborts = 0, steps = 0;
  for (int op = 0; op < 10000; ++op) {
    const int kind = static_cast<int>(rng() % 10);
    if (kind < 3) {
      std::vector<int32_t> prompt = bases[rng() % bases.size()];
      prompt.resize(1 + rng() % prompt.size());
      for (int i = static_cast<int>(rng() % 12); i > 0; --i) prompt.push_back(rng() % 500 + 3);
      auto id = scheduler->Submit(Greedy(prompt, 1 + static_cast<int>(rng() % 24)));
      if (id.ok()) {
        live.push_back(*id);
        ++submits;
      } else {
        ASSERT_EQ(id.status().code(), absl::StatusCode::kResourceExhausted) << id.status();
      }
    } else if (kind < 4 && !live.empty()) {
      const RequestId id = live[rng() % live.size()];
      const absl::Status status = scheduler->Abort(id);
      ASSERT_TRUE(status.ok() || status.code() == absl::StatusCode::kNotFound) << status;
      aborts += status.ok();
    } else {
      testing::Collect(scheduler->Step(), &out);
      ++steps;
      const absl::Status consistent = engine->kv_store().CheckConsistency();
      ASSERT_TRUE(consistent.ok()) << "after operation " << op << ": " << consistent;
    }
    std::erase_if(live, [&](RequestId id) { return out[id].finished; });
  }
  for (RequestId id : live) (void)scheduler->Abort(id);
  RunAll(*scheduler);
  std::printf("%d submits, %d aborts, %d steps, %ld preemptions, %ld cache hits\n", submits, aborts,
              steps, static_cast<long>(scheduler->stats().preemptions),
              static_cast<long>(engine->kv_store().prefix_cache()->stats().hits));
  EXPECT_GT(submits, 1000);
  EXPECT_GT(scheduler->stats().preemptions, 10);
  EXPECT_GT(engine->kv_store().prefix_cache()->stats().hits, 100);
  ASSERT_TRUE(engine->kv_store().CheckConsistency().ok());
  const KvUsage usage = engine->kv_store().Usage();
  EXPECT_EQ(usage.dense_used, 0);
  EXPECT_EQ(usage.streaming_used, 0);
  engine->kv_store().prefix_cache()->Clear();
  EXPECT_EQ(engine->kv_store().tables().dense_allocator().num_used(), 0);
  EXPECT_EQ(engine->kv_store().tables().streaming_allocator().num_used(), 0);
}

INSTANTIATE_TEST_SUITE_P(Preemption, RandomOperationsTest,
                         ::testing::Values(PreemptionMode::kRecompute, PreemptionMode::kSwap),
                         [](const auto& info) {
                           return info.param == PreemptionMode::kSwap ? "Swap" : "Recompute";
                         });

}  // namespace
}  // namespace lserve
