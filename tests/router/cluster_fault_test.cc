// Faults in a live cluster (router, 2 prefill and 2 decode workers on 127.0.0.1; decode
// workers behind proxies that can cut or hold a KV push): a decode worker killed
// mid-stream, a prefill worker killed mid-transfer, a cut KV stream, a decode worker
// stalled past its heartbeat. In each, the client gets a retried success with the tokens
// it would have had (dense attention, so a resumed request is exact), short requests from
// other clients keep being served, and every surviving worker ends with no KV in use.
#include <signal.h>

#include <atomic>
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

constexpr int64_t kPushBytes = 32 << 10;  // more than control calls, less than a KV push

std::unique_ptr<Cluster> StartCluster() {
  ClusterOptions options;
  options.worker_args = {"--dense"};
  options.proxy_decode = true;
  auto cluster = Cluster::Start(options);
  EXPECT_TRUE(cluster.ok()) << cluster.status();
  return cluster.ok() ? *std::move(cluster) : nullptr;
}

// Short requests from another client while a fault happens; each must succeed.
class Bystander {
 public:
  explicit Bystander(Cluster& cluster) : client_(cluster.ConnectRouter()) {
    thread_ = std::thread([this] {
      for (int i = 0; i < 2000 && !stop_; ++i) {
        auto result =
            client_->Generate(Request(8, 500 + i, 8, 0.0f), nullptr, std::chrono::seconds(30));
        (result.ok() && result->tokens.size() == 8 ? ok_ : failed_)++;
        if (!result.ok()) last_error_ = result.status().ToString();
      }
    });
  }
  // Stops and expects every request served.
  void Finish() {
    stop_ = true;
    thread_.join();
    EXPECT_GT(ok_, 0);
    EXPECT_EQ(failed_, 0) << last_error_;
  }

 private:
  std::unique_ptr<Client> client_;
  std::atomic<bool> stop_{false};
  std::atomic<int> ok_{0}, failed_{0};
  std::string last_error_;
  std::thread thread_;
};

double RouterMetric(Cluster& cluster, const std::string& name, const std::string& labels = "") {
  auto metrics = cluster.Metrics(cluster.router());
  return metrics.ok() ? SampleSum(*metrics, name, labels) : -1;
}

void ExpectKvFreedOnSurvivors(Cluster& cluster) {
  for (int i = 0; i < cluster.num_prefill(); ++i) {
    if (cluster.prefill(i).pid() > 0) {
      EXPECT_TRUE(cluster.KvReturnsToZero(cluster.prefill(i)));
    }
  }
  for (int i = 0; i < cluster.num_decode(); ++i) {
    if (cluster.decode(i).pid() > 0) {
      EXPECT_TRUE(cluster.KvReturnsToZero(cluster.decode(i)));
    }
  }
}

// The decode worker that received a KV push since `before` (per proxy), or -1.
int DecodeWorkerHandedTo(Cluster& cluster, const std::vector<int64_t>& before) {
  for (int i = 0; i < cluster.num_decode(); ++i) {
    if (cluster.decode_proxy(i).forwarded() - before[i] > kPushBytes) return i;
  }
  return -1;
}

std::vector<int64_t> Forwarded(Cluster& cluster) {
  std::vector<int64_t> bytes;
  for (int i = 0; i < cluster.num_decode(); ++i)
    bytes.push_back(cluster.decode_proxy(i).forwarded());
  return bytes;
}

// Streams `request` through the router; at the 5th token, `fault` acts on the decode
// worker the request was handed to.
absl::StatusOr<GenerateResult> StreamWithFault(Cluster& cluster, const v1::GenerateRequest& request,
                                               const std::function<void(int decode)>& fault) {
  const std::vector<int64_t> before = Forwarded(cluster);
  auto client = cluster.ConnectRouter();
  int received = 0;
  bool done = false;
  return client->Generate(
      request,
      [&](const v1::GenerateResponse& response) {
        received += response.tokens_size();
        if (received < 5 || done) return;
        done = true;
        const int decode = DecodeWorkerHandedTo(cluster, before);
        ASSERT_GE(decode, 0);
        fault(decode);
      },
      std::chrono::seconds(120));
}

TEST(ClusterFaultTest, ADecodeWorkerKilledMidStreamIsResumedOnAnother) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  const v1::GenerateRequest request = Request(40, 1, 600, 0.8f);
  Bystander bystander(*cluster);
  int killed = -1;
  auto result = StreamWithFault(*cluster, request, [&](int decode) {
    killed = decode;
    cluster->decode(decode).Stop(SIGKILL, std::chrono::seconds(10));
  });
  bystander.Finish();
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_GE(killed, 0);
  auto expected = cluster->Connect(cluster->reference())->Generate(request);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(Ids(*result), Ids(*expected));
  EXPECT_GE(RouterMetric(*cluster, "lserve_router_retries_total"), 1);
  ExpectKvFreedOnSurvivors(*cluster);
}

TEST(ClusterFaultTest, APrefillWorkerKilledMidTransferIsRecovered) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  Bystander bystander(*cluster);
  for (int i = 0; i < cluster->num_decode(); ++i) cluster->decode_proxy(i).HoldAfter(kPushBytes);
  const v1::GenerateRequest request = Request(300, 2, 40, 0.8f);
  auto pending = std::async(std::launch::async, [&] {
    return cluster->ConnectRouter()->Generate(request, nullptr, std::chrono::seconds(120));
  });
  // The push is held half-way: the prefill worker holding KV is the one pushing.
  bool held = false;
  for (int i = 0; i < 2000 && !held; ++i) {
    for (int d = 0; d < cluster->num_decode(); ++d) held |= cluster->decode_proxy(d).holding();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(held);
  int killed = -1;
  for (int p = 0; p < cluster->num_prefill() && killed < 0; ++p) {
    auto load = cluster->Connect(cluster->prefill(p))->Load();
    if (load.ok() && load->dense().used_pages() > 0) killed = p;
  }
  ASSERT_GE(killed, 0);
  cluster->prefill(killed).Stop(SIGKILL, std::chrono::seconds(10));
  for (int d = 0; d < cluster->num_decode(); ++d) cluster->decode_proxy(d).Resume();
  auto result = pending.get();
  bystander.Finish();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_GE(RouterMetric(*cluster, "lserve_router_retries_total"), 1);
  auto expected = cluster->Connect(cluster->reference())->Generate(request);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(Ids(*result), Ids(*expected));
  ExpectKvFreedOnSurvivors(*cluster);
}

TEST(ClusterFaultTest, ACutKvStreamIsRetried) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  Bystander bystander(*cluster);
  for (int i = 0; i < cluster->num_decode(); ++i) cluster->decode_proxy(i).CutAfter(kPushBytes);
  const v1::GenerateRequest request = Request(300, 3, 40, 0.8f);
  auto result = cluster->ConnectRouter()->Generate(request, nullptr, std::chrono::seconds(120));
  bystander.Finish();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_GE(cluster->decode_proxy(0).cuts() + cluster->decode_proxy(1).cuts(), 1);
  EXPECT_GE(RouterMetric(*cluster, "lserve_router_retries_total"), 1);
  auto expected = cluster->Connect(cluster->reference())->Generate(request);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(Ids(*result), Ids(*expected));
  ExpectKvFreedOnSurvivors(*cluster);
  // Later hand-offs go through.
  auto again = cluster->ConnectRouter()->Generate(Request(300, 4, 8, 0.0f));
  EXPECT_TRUE(again.ok()) << again.status();
}

TEST(ClusterFaultTest, ADecodeWorkerStalledPastItsHeartbeatIsRoutedAround) {
  auto cluster = StartCluster();
  ASSERT_NE(cluster, nullptr);
  const v1::GenerateRequest request = Request(40, 5, 600, 0.8f);
  int stalled = -1;
  Bystander bystander(*cluster);
  auto result = StreamWithFault(*cluster, request, [&](int decode) {
    stalled = decode;
    kill(cluster->decode(decode).pid(), SIGSTOP);
  });
  ASSERT_GE(stalled, 0);
  // While it is stalled, the router serves from the others and drops it.
  bool dropped = false;
  for (int i = 0; i < 300 && !dropped; ++i) {
    dropped = RouterMetric(*cluster, "lserve_router_worker_healthy") == 3;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  bystander.Finish();
  kill(cluster->decode(stalled).pid(), SIGCONT);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_TRUE(dropped);
  EXPECT_GE(RouterMetric(*cluster, "lserve_router_retries_total"), 1);
  auto expected = cluster->Connect(cluster->reference())->Generate(request);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(Ids(*result), Ids(*expected));
  // Awake again, it registers anew and frees the stream the router gave up on.
  EXPECT_TRUE(cluster->WaitHealthyWorkers(4));
  ExpectKvFreedOnSurvivors(*cluster);
}

}  // namespace
}  // namespace lserve
