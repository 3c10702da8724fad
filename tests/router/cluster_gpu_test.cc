// The disaggregated cluster on two GPUs, with the KV hand-off over NCCL: a router, prefill
// workers on GPU 0 and decode workers on GPU 1 (cuda backend), and a unified reference
// worker on GPU 0. Generation through the NCCL path equals the reference's greedy tokens;
// a decode worker killed while KV is under way leaves the prefill worker healthy, with its
// pages freed, serving the next request; a prefill worker killed while KV is under way
// leaves the decode worker's claimed pages freed, and the router retries.
//
// Needs two GPUs: runs only where LSERVE_TEST_GPUS is 2 or more (scripts/gpu_handoff_run.sh
// sets it); elsewhere every test is skipped. LSERVE_GPU_MODEL names a model folder (default:
// the built-in 100m model).
#include <signal.h>
#include <stdlib.h>

#include <future>
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

bool HaveTwoGpus() {
  const char* gpus = std::getenv("LSERVE_TEST_GPUS");
  return gpus != nullptr && std::atoi(gpus) >= 2;
}

ClusterOptions GpuCluster(int prefill, int decode, bool dense) {
  ClusterOptions options;
  const char* model = std::getenv("LSERVE_GPU_MODEL");
  options.worker_args = {
      "--backend=cuda", "--kv_transport=nccl", "--gpu_memory_utilization=0.15",
      model != nullptr ? absl::StrCat("--model=", model) : std::string("--builtin_model=100m")};
  if (dense) options.worker_args.push_back("--dense");
  options.prefill_args = {"--device=0"};
  options.decode_args = {"--device=1"};
  options.reference_args = {"--device=0"};
  options.prefill_workers = prefill;
  options.decode_workers = decode;
  return options;
}

double Metric(Cluster& cluster, const testing::ServerProcess& process, const std::string& name,
              const std::string& labels = "") {
  auto metrics = cluster.Metrics(process);
  return metrics.ok() ? SampleSum(*metrics, name, labels) : -1;
}

int64_t UsedPages(Cluster& cluster, testing::ServerProcess& worker) {
  auto load = cluster.Connect(worker)->Load();
  return load.ok() ? load->dense().used_pages() + load->streaming().used_pages() : -1;
}

// The first of `workers` (by index) found holding KV pages within 60 s, or -1.
int FirstHoldingPages(Cluster& cluster, bool prefill_side) {
  const int count = prefill_side ? cluster.num_prefill() : cluster.num_decode();
  for (int round = 0; round < 3000; ++round) {
    for (int i = 0; i < count; ++i) {
      testing::ServerProcess& worker = prefill_side ? cluster.prefill(i) : cluster.decode(i);
      if (UsedPages(cluster, worker) > 0) return i;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return -1;
}

TEST(ClusterGpuTest, NcclHandOffGivesTheUnifiedWorkersGreedyTokens) {
  if (!HaveTwoGpus()) GTEST_SKIP() << "needs two GPUs (LSERVE_TEST_GPUS)";
  for (bool dense : {false, true}) {
    SCOPED_TRACE(dense ? "dense" : "hybrid");
    auto cluster = Cluster::Start(GpuCluster(1, 1, dense));
    ASSERT_TRUE(cluster.ok()) << cluster.status();
    Cluster& c = **cluster;
    for (const int tokens : {300, 777, 1500}) {
      const v1::GenerateRequest request = Request(tokens, tokens, 16, 0.0f);
      auto got = c.ConnectRouter()->Generate(request, nullptr, std::chrono::seconds(120));
      ASSERT_TRUE(got.ok()) << got.status();
      auto expected = c.Connect(c.reference())->Generate(request);
      ASSERT_TRUE(expected.ok()) << expected.status();
      EXPECT_EQ(Ids(*got), Ids(*expected)) << tokens << " prompt tokens";
    }
    const std::string nccl_in = "direction=\"in\",transport=\"nccl\"";
    EXPECT_GT(Metric(c, c.decode(0), "lserve_kv_transfer_bytes_total", nccl_in), 0);
    EXPECT_GT(Metric(c, c.prefill(0), "lserve_kv_transfer_bytes_total",
                     "direction=\"out\",transport=\"nccl\""),
              0);
    EXPECT_EQ(Metric(c, c.prefill(0), "lserve_kv_transfer_bytes_total",
                     "direction=\"out\",transport=\"grpc\""),
              0);
    // Every hand-off went while its prefill computed the KV, layer by layer.
    EXPECT_EQ(Metric(c, c.prefill(0), "lserve_kv_handoffs_during_prefill_total", "outcome=\"ok\""),
              3);
    EXPECT_TRUE(c.KvReturnsToZero(c.prefill(0)));
    EXPECT_TRUE(c.KvReturnsToZero(c.decode(0)));
  }
}

TEST(ClusterGpuTest, ADecodeWorkerWithoutNcclGetsTheGrpcStreamAndTheFallbackIsCounted) {
  if (!HaveTwoGpus()) GTEST_SKIP() << "needs two GPUs (LSERVE_TEST_GPUS)";
  ClusterOptions options = GpuCluster(1, 1, /*dense=*/true);
  options.decode_args.push_back("--kv_transport=grpc");  // no NCCL receiving end
  auto cluster = Cluster::Start(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  const v1::GenerateRequest request = Request(500, 9, 12, 0.0f);
  for (int i = 0; i < 2; ++i) {
    auto got = c.ConnectRouter()->Generate(request, nullptr, std::chrono::seconds(120));
    ASSERT_TRUE(got.ok()) << got.status();
    auto expected = c.Connect(c.reference())->Generate(request);
    ASSERT_TRUE(expected.ok());
    EXPECT_EQ(Ids(*got), Ids(*expected));
  }
  EXPECT_GT(Metric(c, c.decode(0), "lserve_kv_transfer_bytes_total",
                   "direction=\"in\",transport=\"grpc\""),
            0);
  EXPECT_EQ(Metric(c, c.prefill(0), "lserve_kv_transfer_bytes_total",
                   "direction=\"out\",transport=\"nccl\""),
            0);
  // The first hand-off learns that the peer refuses links; the second does not ask again.
  EXPECT_EQ(Metric(c, c.prefill(0), "lserve_kv_transport_fallbacks_total"), 2);
  EXPECT_EQ(
      Metric(c, c.prefill(0), "lserve_kv_transport_fallbacks_total", "reason=\"refused_recently\""),
      1);
  EXPECT_NE(c.prefill(0).Log().find("falls back to grpc"), std::string::npos);
  EXPECT_TRUE(c.KvReturnsToZero(c.prefill(0)));
  EXPECT_TRUE(c.KvReturnsToZero(c.decode(0)));
}

size_t Count(const std::string& text, const std::string& what) {
  size_t count = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++count;
  return count;
}

TEST(ClusterGpuTest, AnUnusedLinkClosesAtBothEndsAndTheNextHandOffOpensAnother) {
  if (!HaveTwoGpus()) GTEST_SKIP() << "needs two GPUs (LSERVE_TEST_GPUS)";
  ClusterOptions options = GpuCluster(1, 1, /*dense=*/true);
  options.worker_args.push_back("--kv_link_idle_s=1");
  auto cluster = Cluster::Start(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  for (int i = 0; i < 2; ++i) {
    if (i == 1) std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    const v1::GenerateRequest request = Request(400, 20 + i, 6, 0.0f);
    auto got = c.ConnectRouter()->Generate(request, nullptr, std::chrono::seconds(120));
    ASSERT_TRUE(got.ok()) << got.status();
    auto expected = c.Connect(c.reference())->Generate(request);
    ASSERT_TRUE(expected.ok());
    EXPECT_EQ(Ids(*got), Ids(*expected));
  }
  const std::string log = c.prefill(0).Log();
  EXPECT_EQ(Count(log, "unused for 1 s: closing it"), 1u) << log;
  EXPECT_EQ(Count(log, "NCCL KV link to"), 3u);  // opened, closed, opened
  EXPECT_EQ(Metric(c, c.prefill(0), "lserve_kv_transport_fallbacks_total"), 0);
  EXPECT_TRUE(c.KvReturnsToZero(c.prefill(0)));
  EXPECT_TRUE(c.KvReturnsToZero(c.decode(0)));
}

// The sender pauses between posting the receive and sending (fault injection), so a
// test can kill a peer while the KV is under way.
class FaultDelay {
 public:
  FaultDelay() { setenv("LSERVE_FAULT_KV_SEND_DELAY_MS", "3000", 1); }
  ~FaultDelay() { unsetenv("LSERVE_FAULT_KV_SEND_DELAY_MS"); }
};

TEST(ClusterGpuTest, ADecodeWorkerKilledDuringTheTransferLeavesThePrefillWorkerServing) {
  if (!HaveTwoGpus()) GTEST_SKIP() << "needs two GPUs (LSERVE_TEST_GPUS)";
  FaultDelay delay;
  auto cluster = Cluster::Start(GpuCluster(1, 2, /*dense=*/true));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  const v1::GenerateRequest request = Request(900, 3, 12, 0.0f);
  auto pending = std::async(std::launch::async, [&] {
    return c.ConnectRouter()->Generate(request, nullptr, std::chrono::seconds(120));
  });
  // The receiving decode worker holds the pages it claimed while the sender pauses.
  const int receiving = FirstHoldingPages(c, /*prefill_side=*/false);
  ASSERT_GE(receiving, 0);
  c.decode(receiving).Stop(SIGKILL, std::chrono::seconds(10));
  auto result = pending.get();
  ASSERT_TRUE(result.ok()) << result.status();  // retried on the other decode worker
  auto expected = c.Connect(c.reference())->Generate(request);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(Ids(*result), Ids(*expected));
  EXPECT_GE(Metric(c, c.router(), "lserve_router_retries_total"), 1);
  // The prefill worker aborted the dead link, freed the pages and serves the next one.
  EXPECT_TRUE(c.KvReturnsToZero(c.prefill(0)));
  auto next =
      c.ConnectRouter()->Generate(Request(600, 4, 8, 0.0f), nullptr, std::chrono::seconds(120));
  EXPECT_TRUE(next.ok()) << next.status();
  EXPECT_TRUE(c.KvReturnsToZero(c.prefill(0)));
  EXPECT_TRUE(c.KvReturnsToZero(c.decode(1 - receiving)));
}

TEST(ClusterGpuTest, APrefillWorkerKilledDuringTheTransferIsRetriedAndTheReceiveFreed) {
  if (!HaveTwoGpus()) GTEST_SKIP() << "needs two GPUs (LSERVE_TEST_GPUS)";
  FaultDelay delay;
  auto cluster = Cluster::Start(GpuCluster(2, 1, /*dense=*/true));
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  Cluster& c = **cluster;
  const v1::GenerateRequest request = Request(900, 5, 12, 0.0f);
  auto pending = std::async(std::launch::async, [&] {
    return c.ConnectRouter()->Generate(request, nullptr, std::chrono::seconds(120));
  });
  ASSERT_GE(FirstHoldingPages(c, /*prefill_side=*/false), 0);  // the receive is posted
  const int sender = FirstHoldingPages(c, /*prefill_side=*/true);
  ASSERT_GE(sender, 0);
  c.prefill(sender).Stop(SIGKILL, std::chrono::seconds(10));
  auto result = pending.get();
  ASSERT_TRUE(result.ok()) << result.status();
  auto expected = c.Connect(c.reference())->Generate(request);
  ASSERT_TRUE(expected.ok());
  // The retry prefills the prompt and the first token again: in bf16 that differs in the
  // last bits from decoding the token, so only the first token and the length must agree.
  ASSERT_EQ(Ids(*result).size(), Ids(*expected).size());
  EXPECT_EQ(Ids(*result)[0], Ids(*expected)[0]);
  EXPECT_GE(Metric(c, c.router(), "lserve_router_retries_total"), 1);
  // The orphaned receive timed out and gave its pages back.
  EXPECT_TRUE(c.KvReturnsToZero(c.decode(0)));
  EXPECT_TRUE(c.KvReturnsToZero(c.prefill(1 - sender)));
}

}  // namespace
}  // namespace lserve
