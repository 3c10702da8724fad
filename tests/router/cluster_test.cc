// The router with 2 prefill and 2 decode workers as real processes on 127.0.0.1 (CPU
// backend): the disaggregated path gives exactly a unified worker's tokens, with
// stories260K and the built-in model, for prompts far past small streaming windows (the
// ring and the page statistics travel with the KV); mixed concurrent load spreads over
// both pools; the prefix-aware policy sends repeated prefixes to the worker holding them.
#include <atomic>
#include <future>
#include <map>
#include <thread>

#include "gtest/gtest.h"
#include "tests/router/cluster_util.h"
#include "tests/testing/http_get.h"

namespace lserve {
namespace {

using testing::Cluster;
using testing::ClusterOptions;
using testing::Ids;
using testing::Request;
using testing::SampleSum;

// Small windows, so that every prompt here overflows them.
const std::vector<std::string> kSmallWindows = {
    "--sink=4", "--prefill_local=32", "--decode_local=32", "--page_size=16", "--token_budget=64"};

struct Case {
  v1::GenerateRequest request;
};

// Runs every case through the router, one at a time, then on the reference worker. One
// at a time: the CPU kernels' summation order depends on the batch's size, so requests
// sharing a step with others may round differently (see bench/results/README.md).
void RunAndCompare(Cluster& cluster, std::vector<Case>& cases) {
  auto client = cluster.ConnectRouter();
  auto reference = cluster.Connect(cluster.reference());
  for (size_t i = 0; i < cases.size(); ++i) {
    auto result = client->Generate(cases[i].request, nullptr, std::chrono::seconds(120));
    ASSERT_TRUE(result.ok()) << "case " << i << ": " << result.status();
    auto expected = reference->Generate(cases[i].request);
    ASSERT_TRUE(expected.ok()) << expected.status();
    EXPECT_EQ(Ids(*result), Ids(*expected))
        << "case " << i << ": prompt of " << cases[i].request.prompt_token_ids_size()
        << " tokens, temperature " << cases[i].request.sampling().temperature();
  }
}

void ExpectAllKvFreed(Cluster& cluster) {
  for (int i = 0; i < cluster.num_prefill(); ++i) {
    EXPECT_TRUE(cluster.KvReturnsToZero(cluster.prefill(i))) << "prefill worker " << i;
  }
  for (int i = 0; i < cluster.num_decode(); ++i) {
    EXPECT_TRUE(cluster.KvReturnsToZero(cluster.decode(i))) << "decode worker " << i;
  }
}

double RouterMetric(Cluster& cluster, const std::string& name, const std::string& labels = "") {
  auto metrics = cluster.Metrics(cluster.router());
  return metrics.ok() ? SampleSum(*metrics, name, labels) : -1;
}

TEST(ClusterTest, Stories260KHandsOffExactlyPastSmallWindows) {
  ClusterOptions options;
  options.worker_args = {"--model=" LSERVE_SHARED_DIR "/models/stories260K"};
  options.worker_args.insert(options.worker_args.end(), kSmallWindows.begin(), kSmallWindows.end());
  auto cluster = Cluster::Start(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::vector<Case> cases;
  int salt = 0;
  for (int prompt : {20, 45, 90, 200}) {
    for (float temperature : {0.0f, 0.8f}) {
      cases.push_back({Request(prompt, ++salt, 40, temperature)});
    }
  }
  RunAndCompare(**cluster, cases);
  // Every prompt was past the router's threshold: every request was handed off.
  EXPECT_EQ(RouterMetric(**cluster, "lserve_router_kv_handoff_seconds_count"), cases.size());
  EXPECT_GT(RouterMetric(**cluster, "lserve_router_kv_handoff_bytes_total"), 0);
  ExpectAllKvFreed(**cluster);
}

const std::vector<std::string> kBuiltinSmallWindows = {
    "--sink=8", "--prefill_local=64", "--decode_local=48", "--page_size=16", "--token_budget=128"};

TEST(ClusterTest, BuiltinModelHandsOffExactlyPastSmallWindows) {
  ClusterOptions options;
  options.worker_args = kBuiltinSmallWindows;
  auto cluster = Cluster::Start(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  std::vector<Case> cases;
  int salt = 0;
  for (int prompt : {17, 100, 260, 500}) {
    for (float temperature : {0.0f, 0.9f}) {
      cases.push_back({Request(prompt, ++salt, 48, temperature)});
    }
  }
  RunAndCompare(**cluster, cases);
  EXPECT_EQ(RouterMetric(**cluster, "lserve_router_kv_handoff_seconds_count"), cases.size());
  ExpectAllKvFreed(**cluster);
}

TEST(ClusterTest, MixedConcurrentLoadSpreadsOverBothPools) {
  ClusterOptions options;
  options.worker_args = kBuiltinSmallWindows;
  options.reference = false;
  auto cluster = Cluster::Start(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  constexpr int kRequests = 24;
  std::atomic<int> next{0}, ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&] {
      auto client = (*cluster)->ConnectRouter();
      for (int i; (i = next++) < kRequests;) {
        const int prompt = i % 3 == 0 ? 8 : 100 + 40 * (i % 5);  // short ones stay unified
        auto result = client->Generate(Request(prompt, i, 24, i % 2 ? 0.7f : 0.0f), nullptr,
                                       std::chrono::seconds(120));
        if (result.ok() && result->tokens.size() == 24) ++ok;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(ok, kRequests);
  ExpectAllKvFreed(**cluster);
  auto served = [&](testing::ServerProcess& worker) {
    auto metrics = (*cluster)->Metrics(worker);
    return metrics.ok() ? SampleSum(*metrics, "lserve_requests_total") : -1;
  };
  const double d0 = served((*cluster)->decode(0)), d1 = served((*cluster)->decode(1));
  const double p0 = served((*cluster)->prefill(0)), p1 = served((*cluster)->prefill(1));
  // Every request decoded on a decode worker; the 16 long ones prefilled on a prefill one.
  EXPECT_EQ(d0 + d1, kRequests);
  EXPECT_EQ(p0 + p1, 16);
  // Each worker of a pool takes a real share. Not an even one: on a loaded two-core machine
  // one worker may finish its requests sooner and be chosen more (5 of 24 was seen).
  EXPECT_GE(std::min(d0, d1), kRequests / 6) << d0 << " vs " << d1;
  EXPECT_GE(std::min(p0, p1), 16 / 6) << p0 << " vs " << p1;
  EXPECT_EQ(RouterMetric(**cluster, "lserve_router_routing_decisions_total", "pool=\"decode\""),
            kRequests);
  EXPECT_EQ(RouterMetric(**cluster, "lserve_router_requests_total", "status=\"ok\""), kRequests);
}

TEST(ClusterTest, PrefixAwareRoutingSendsRepeatsToTheWorkerHoldingThePrefix) {
  ClusterOptions options;
  options.worker_args = {"--prefix_caching", "--page_size=16"};
  options.router_args = {"--prefill_policy=prefix_aware", "--decode_policy=prefix_aware",
                         "--prefix_pages=2", "--prefix_page_tokens=16"};
  options.reference = false;
  auto cluster = Cluster::Start(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto client = (*cluster)->ConnectRouter();
  auto hits = [&](int worker) {
    auto metrics = (*cluster)->Metrics((*cluster)->prefill(worker));
    return metrics.ok() ? SampleSum(*metrics, "lserve_prefix_cache_hit_tokens_total") : -1;
  };
  for (int prefix = 0; prefix < 6; ++prefix) {
    const v1::GenerateRequest shared = Request(64, 1000 + prefix, 4, 0.0f);
    int holder = -1;
    for (int repeat = 0; repeat < 3; ++repeat) {
      v1::GenerateRequest request = shared;
      for (int i = 0; i < 20; ++i) request.add_prompt_token_ids(3 + (repeat * 31 + i) % 400);
      const double before[2] = {hits(0), hits(1)};
      auto result = client->Generate(request, nullptr, std::chrono::seconds(60));
      ASSERT_TRUE(result.ok()) << result.status();
      const double gained[2] = {hits(0) - before[0], hits(1) - before[1]};
      if (repeat == 0) continue;  // the first one fills the cache
      // The repeat hit the cached prefix (64 tokens, whole pages of 16) on one worker,
      // the same worker for every repeat of this prefix.
      EXPECT_EQ(result->timings.cached_prompt_tokens(), 64) << "prefix " << prefix;
      const int worker = gained[0] > 0 ? 0 : 1;
      EXPECT_EQ(gained[worker], 64) << "prefix " << prefix;
      EXPECT_EQ(gained[1 - worker], 0) << "prefix " << prefix;
      if (holder >= 0) {
        EXPECT_EQ(worker, holder) << "prefix " << prefix;
      }
      holder = worker;
    }
  }
  ExpectAllKvFreed(**cluster);
}

TEST(ClusterTest, BackpressureAndDeadlinesReachTheClientAndTheWorkers) {
  ClusterOptions options;
  options.router_args = {"--max_in_flight=1", "--max_queue=0"};
  options.prefill_workers = 1;
  options.decode_workers = 1;
  options.reference = false;
  auto cluster = Cluster::Start(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  auto client = (*cluster)->ConnectRouter();
  // A request's deadline travels to the worker, which stops and frees its pages.
  v1::GenerateRequest slow = Request(40, 1, 4000, 0.0f);
  slow.set_timeout_ms(300);
  EXPECT_EQ(client->Generate(slow).status().code(), absl::StatusCode::kDeadlineExceeded);
  ExpectAllKvFreed(**cluster);
  // The router is full with one request in flight: the next gets RESOURCE_EXHAUSTED with
  // a retry hint.
  slow.set_timeout_ms(0);
  slow.set_request_id("slow");
  std::promise<void> started;
  auto running = std::async(std::launch::async, [&] {
    bool first = true;
    return client
        ->Generate(slow,
                   [&](const v1::GenerateResponse&) {
                     if (first) started.set_value();
                     first = false;
                   })
        .status();
  });
  ASSERT_EQ(started.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  const absl::Status refused = client->Generate(Request(8, 2, 4, 0.0f)).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_EQ(refused.GetPayload(kRetryPushbackPayload).value_or(absl::Cord()), "1000") << refused;
  EXPECT_TRUE(client->Abort("slow").ok());
  EXPECT_EQ(running.get().code(), absl::StatusCode::kCancelled);
  ExpectAllKvFreed(**cluster);
  EXPECT_TRUE(client->Generate(Request(8, 3, 4, 0.0f)).ok());
}

}  // namespace
}  // namespace lserve
