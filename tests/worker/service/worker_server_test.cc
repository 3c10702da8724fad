// lserve-worker as a real process on 127.0.0.1, driven by concurrent streaming clients:
// outputs equal the offline engine's, cancellation frees every page, bad input and a full
// queue get clear statuses, SIGTERM drains, TLS and mTLS work, 64 streams at once are
// fine, and health answers by the drain state.
#include <atomic>
#include <thread>
#include <vector>

#include "client/client.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "lserve/v1/worker.grpc.pb.h"
#include "tests/testing/process_util.h"
#include "tests/testing/requests.h"
#include "worker/model/synthetic_model.h"
#include "worker/scheduler/offline.h"

namespace lserve {
namespace {

using testing::Ids;
using testing::Request;
using testing::ServerProcess;

std::unique_ptr<ServerProcess> StartWorker(std::vector<std::string> args = {}) {
  args.insert(args.begin(),
              {"--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0", "--threads=2"});
  auto worker = ServerProcess::Start(LSERVE_WORKER_BINARY, args);
  EXPECT_TRUE(worker.ok()) << worker.status();
  return worker.ok() ? *std::move(worker) : nullptr;
}

std::unique_ptr<Client> Connect(const ServerProcess& worker, net::TlsFiles tls = {}) {
  ClientOptions options;
  options.target = worker.address();
  options.tls = std::move(tls);
  return *Client::Connect(options);
}

// Polls the worker's load until no page is held by a request (bounded).
bool KvReturnsToZero(Client& client) {
  for (int i = 0; i < 500; ++i) {
    auto load = client.Load();
    if (load.ok() && load->dense().used_pages() == 0 && load->streaming().used_pages() == 0 &&
        load->running() == 0 && load->waiting() == 0) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

TEST(WorkerServerTest, ConcurrentStreamsEqualTheOfflineEngine) {
  auto worker = StartWorker();
  ASSERT_NE(worker, nullptr);
  auto client = Connect(*worker);
  std::vector<v1::GenerateRequest> requests;
  for (int i = 0; i < 8; ++i) requests.push_back(Request(10 + 7 * i, i, 12, i % 2 ? 0.9f : 0.0f));
  std::vector<absl::StatusOr<GenerateResult>> results(requests.size(), absl::UnknownError(""));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < requests.size(); ++i) {
    threads.emplace_back([&, i] { results[i] = client->Generate(requests[i]); });
  }
  for (auto& thread : threads) thread.join();
  auto engine = *Engine::Create(*MakeSyntheticWeights(TinySyntheticConfig(), 1), EngineOptions{});
  std::vector<GenerationRequest> offline;
  for (const auto& r : requests) {
    GenerationRequest g;
    g.prompt.assign(r.prompt_token_ids().begin(), r.prompt_token_ids().end());
    g.sampling.max_tokens = r.sampling().max_tokens();
    g.sampling.temperature = r.sampling().temperature();
    g.sampling.seed = r.sampling().seed();
    offline.push_back(g);
  }
  const auto expected = Generate(*engine, offline, SchedulerOptions{});
  for (size_t i = 0; i < requests.size(); ++i) {
    ASSERT_TRUE(results[i].ok()) << results[i].status();
    EXPECT_EQ(Ids(*results[i]), expected[i].tokens) << "request " << i;
    EXPECT_EQ(results[i]->finish_reason, v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(results[i]->timings.generated_tokens(), 12);
  }
  EXPECT_EQ(worker->Stop(SIGTERM, std::chrono::seconds(30)), 0);
}

TEST(WorkerServerTest, ClientCancellingMidStreamFreesEveryPage) {
  auto worker = StartWorker();
  ASSERT_NE(worker, nullptr);
  auto client = Connect(*worker);
  grpc::ClientContext context;
  auto reader = client->stub().Generate(&context, Request(60, 1, 3000));
  v1::GenerateResponse response;
  int tokens = 0;
  while (tokens < 5 && reader->Read(&response)) tokens += response.tokens_size();
  ASSERT_GE(tokens, 5);
  ASSERT_GT(client->Load()->dense().used_pages() + client->Load()->streaming().used_pages(), 0);
  context.TryCancel();
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(KvReturnsToZero(*client));
}

TEST(WorkerServerTest, PrefillsWhoseCallerGoesAwayHoldNoLease) {
  auto worker = StartWorker({"--role=prefill"});
  ASSERT_NE(worker, nullptr);
  auto client = Connect(*worker);
  auto stub = v1::Worker::NewStub(client->channel());
  // Deadlines from 1 to 40 ms cut some prefills while they run and others after they
  // finished but before their handle arrived; none may keep its KV for the lease.
  int cut = 0;
  for (int i = 0; i < 40; ++i) {
    v1::PrefillRequest request;
    *request.mutable_request() = Request(400, i, 8);
    request.set_lease_ms(600000);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(1 + i));
    v1::PrefillResponse response;
    const grpc::Status status = stub->Prefill(&context, request, &response);
    if (status.ok()) {
      v1::ReleaseKvRequest release;
      release.set_kv_handle(response.kv_handle());
      grpc::ClientContext release_context;
      v1::ReleaseKvResponse released;
      ASSERT_TRUE(stub->ReleaseKv(&release_context, release, &released).ok());
    } else {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
      ++cut;
    }
  }
  EXPECT_GT(cut, 0);
  EXPECT_TRUE(KvReturnsToZero(*client));
}

TEST(WorkerServerTest, BadInputGetsClearStatuses) {
  auto worker = StartWorker({"--max_context=512"});
  ASSERT_NE(worker, nullptr);
  auto client = Connect(*worker);
  EXPECT_EQ(client->Generate(Request(600, 1, 4)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(client->Generate(Request(500, 1, 100)).status().code(),
            absl::StatusCode::kInvalidArgument);
  v1::GenerateRequest bad = Request(5, 1, 4);
  bad.mutable_sampling()->set_temperature(-3);
  EXPECT_EQ(client->Generate(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = Request(5, 1, 4);
  bad.mutable_sampling()->set_top_p(2.0f);
  EXPECT_EQ(client->Generate(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = Request(5, 1, 4);
  bad.set_model("nope");
  EXPECT_EQ(client->Generate(bad).status().code(), absl::StatusCode::kNotFound);
  bad = Request(0, 1, 4);
  EXPECT_EQ(client->Generate(bad).status().code(), absl::StatusCode::kInvalidArgument);
  // The worker is unharmed.
  EXPECT_TRUE(client->Generate(Request(5, 1, 4)).ok());
  EXPECT_EQ(client->ModelInfo()->max_context(), 512);
}

TEST(WorkerServerTest, FullQueueGetsResourceExhausted) {
  auto worker = StartWorker({"--max_running=1", "--max_queue=1"});
  ASSERT_NE(worker, nullptr);
  auto client = Connect(*worker);
  std::vector<std::thread> holders;
  std::vector<absl::Status> held(2);
  for (int i = 0; i < 2; ++i) {
    v1::GenerateRequest r = Request(20, i, 3000);
    r.set_request_id("hold-" + std::to_string(i));
    holders.emplace_back([&, i, r] { held[i] = client->Generate(r).status(); });
    for (int wait = 0; wait < 500; ++wait) {
      auto load = client->Load();
      if (load.ok() && load->running() + load->waiting() == i + 1) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  const absl::Status refused = client->Generate(Request(5, 9, 4)).status();
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_EQ(refused.GetPayload(kRetryPushbackPayload).value_or(absl::Cord()), "1000") << refused;
  for (int i = 0; i < 2; ++i) EXPECT_TRUE(client->Abort("hold-" + std::to_string(i)).ok());
  for (auto& thread : holders) thread.join();
  for (const auto& status : held) EXPECT_EQ(status.code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(KvReturnsToZero(*client));
}

TEST(WorkerServerTest, SigtermLetsRunningRequestsFinishAndRefusesNewOnes) {
  auto worker = StartWorker({"--drain_timeout_s=60"});
  ASSERT_NE(worker, nullptr);
  auto client = Connect(*worker);
  std::vector<absl::StatusOr<GenerateResult>> results(3, absl::UnknownError(""));
  std::atomic<int> started{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      results[i] = client->Generate(Request(30, i, 400), [&](const v1::GenerateResponse&) {
        if (started.load() < 3) ++started;
      });
    });
  }
  while (started.load() < 3) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  kill(worker->pid(), SIGTERM);
  for (int wait = 0; wait < 500 && !client->Load()->draining(); ++wait) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(client->Generate(Request(5, 7, 4)).status().code(), absl::StatusCode::kUnavailable);
  for (auto& thread : threads) thread.join();
  for (const auto& result : results) {
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->tokens.size(), 400u);
  }
  EXPECT_EQ(worker->Stop(SIGTERM, std::chrono::seconds(30)), 0);
}

TEST(WorkerServerTest, HealthReportsServingUntilDrained) {
  auto worker = StartWorker();
  ASSERT_NE(worker, nullptr);
  auto client = Connect(*worker);
  auto health = grpc::health::v1::Health::NewStub(client->channel());
  auto check = [&](const std::string& service) {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    EXPECT_TRUE(health->Check(&context, request, &response).ok());
    return response.status();
  };
  EXPECT_EQ(check(""), grpc::health::v1::HealthCheckResponse::SERVING);
  EXPECT_EQ(check("lserve.v1.Generation"), grpc::health::v1::HealthCheckResponse::SERVING);
  kill(worker->pid(), SIGTERM);
  bool not_serving = false;
  for (int i = 0; i < 200 && !not_serving; ++i) {
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status = health->Check(&context, request, &response);
    not_serving =
        !status.ok() || response.status() == grpc::health::v1::HealthCheckResponse::NOT_SERVING;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(not_serving);
}

TEST(WorkerServerTest, TlsAndMutualTlsWithGeneratedCertificates) {
  const std::string dir = testing::TempDir();
  ASSERT_EQ(std::system(("bash " LSERVE_SOURCE_DIR "/tests/tls/make_test_certs.sh " + dir).c_str()),
            0);
  {
    auto worker =
        StartWorker({"--tls_cert=" + dir + "/server.pem", "--tls_key=" + dir + "/server.key"});
    ASSERT_NE(worker, nullptr);
    EXPECT_TRUE(Connect(*worker, {"", "", dir + "/ca.pem"})->Generate(Request(5, 1, 3)).ok());
    EXPECT_FALSE(
        Connect(*worker)->Generate(Request(5, 1, 3), nullptr, std::chrono::seconds(5)).ok());
    EXPECT_FALSE(Connect(*worker, {"", "", dir + "/other-ca.pem"})
                     ->Generate(Request(5, 1, 3), nullptr, std::chrono::seconds(5))
                     .ok());
  }
  auto worker =
      StartWorker({"--tls_cert=" + dir + "/server.pem", "--tls_key=" + dir + "/server.key",
                   "--tls_ca=" + dir + "/ca.pem", "--require_client_cert"});
  ASSERT_NE(worker, nullptr);
  EXPECT_TRUE(Connect(*worker, {dir + "/client.pem", dir + "/client.key", dir + "/ca.pem"})
                  ->Generate(Request(5, 1, 3))
                  .ok());
  // No certificate, or one from another CA: no service.
  EXPECT_FALSE(Connect(*worker, {"", "", dir + "/ca.pem"})
                   ->Generate(Request(5, 1, 3), nullptr, std::chrono::seconds(5))
                   .ok());
  EXPECT_FALSE(
      Connect(*worker, {dir + "/other-client.pem", dir + "/other-client.key", dir + "/ca.pem"})
          ->Generate(Request(5, 1, 3), nullptr, std::chrono::seconds(5))
          .ok());
  std::filesystem::remove_all(dir);
}

TEST(WorkerServerTest, SixtyFourConcurrentStreamsAllFinish) {
  auto worker = StartWorker();
  ASSERT_NE(worker, nullptr);
  auto client = Connect(*worker);
  std::vector<absl::Status> statuses(64);
  std::vector<size_t> counts(64);
  std::vector<std::thread> threads;
  for (int i = 0; i < 64; ++i) {
    threads.emplace_back([&, i] {
      auto result = client->Generate(Request(8 + i % 40, i, 24, i % 3 ? 0.7f : 0.0f));
      statuses[i] = result.status();
      if (result.ok()) counts[i] = result->tokens.size();
    });
  }
  for (auto& thread : threads) thread.join();
  for (int i = 0; i < 64; ++i) {
    EXPECT_TRUE(statuses[i].ok()) << i << ": " << statuses[i];
    EXPECT_EQ(counts[i], 24u) << i;
  }
  EXPECT_TRUE(KvReturnsToZero(*client));
  EXPECT_EQ(worker->Stop(SIGTERM, std::chrono::seconds(30)), 0);
}

}  // namespace
}  // namespace lserve
