#include "tests/router/cluster_util.h"

#include <cstdlib>
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "tests/testing/http_get.h"

namespace lserve::testing {
namespace {

// The binary built with the tests, unless the environment names another (a bundle run on
// another machine, where the build's paths do not exist).
std::string Binary(const char* variable, const char* built) {
  const char* named = std::getenv(variable);
  return named != nullptr && *named != '\0' ? named : built;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Cluster>> Cluster::Start(const ClusterOptions& options) {
  std::unique_ptr<Cluster> cluster(new Cluster());
  cluster->options_ = options;
  std::vector<std::string> router_args = {
      "--listen=127.0.0.1:0",    "--metrics_listen=127.0.0.1:0",
      "--health_interval_s=0.2", "--heartbeat_timeout_s=1.5",
      "--max_attempts=5",        "--disaggregation_min_prompt_tokens=16"};
  router_args.insert(router_args.end(), options.router_args.begin(), options.router_args.end());
  auto router =
      ServerProcess::Start(Binary("LSERVE_ROUTER_BINARY", LSERVE_ROUTER_BINARY), router_args);
  if (!router.ok()) return router.status();
  cluster->router_ = *std::move(router);
  for (int i = 0; i < options.prefill_workers; ++i) {
    auto worker = cluster->StartWorker("prefill", nullptr);
    if (!worker.ok()) return worker.status();
    cluster->prefill_.push_back(*std::move(worker));
  }
  for (int i = 0; i < options.decode_workers; ++i) {
    TcpProxy* proxy = nullptr;
    if (options.proxy_decode) {
      auto started = TcpProxy::Start();
      if (!started.ok()) return started.status();
      cluster->proxies_.push_back(*std::move(started));
      proxy = cluster->proxies_.back().get();
    }
    auto worker = cluster->StartWorker("decode", proxy);
    if (!worker.ok()) return worker.status();
    cluster->decode_.push_back(*std::move(worker));
  }
  if (options.reference) {
    auto worker = cluster->StartWorker("unified", nullptr);
    if (!worker.ok()) return worker.status();
    cluster->reference_ = *std::move(worker);
  }
  if (!cluster->WaitHealthyWorkers(options.prefill_workers + options.decode_workers)) {
    return absl::DeadlineExceededError(
        absl::StrCat("the router did not see its workers: ", cluster->router_->Log()));
  }
  return cluster;
}

absl::StatusOr<std::unique_ptr<ServerProcess>> Cluster::StartWorker(const std::string& role,
                                                                    TcpProxy* proxy) {
  std::vector<std::string> args = {"--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
                                   "--threads=1", "--role=" + role};
  if (role != "unified") args.push_back("--router=" + router_->address());
  // A proxied worker is advertised at its proxy: the router and other workers reach it
  // there. The proxy's target is set once the worker's port is known; the worker only
  // registers (and so is only reached) after it serves.
  if (proxy != nullptr) args.push_back(absl::StrCat("--advertise=127.0.0.1:", proxy->port()));
  args.insert(args.end(), options_.worker_args.begin(), options_.worker_args.end());
  const std::vector<std::string>& role_args = role == "prefill"  ? options_.prefill_args
                                              : role == "decode" ? options_.decode_args
                                                                 : options_.reference_args;
  args.insert(args.end(), role_args.begin(), role_args.end());
  auto worker = ServerProcess::Start(Binary("LSERVE_WORKER_BINARY", LSERVE_WORKER_BINARY), args);
  if (worker.ok() && proxy != nullptr) proxy->SetTarget((*worker)->port("grpc_port"));
  return worker;
}

std::unique_ptr<Client> Cluster::Connect(const ServerProcess& process) {
  return Connect(process,
                 &process == router_.get() ? options_.router_client : options_.worker_client);
}

std::unique_ptr<Client> Cluster::Connect(const ServerProcess& process, ClientOptions options) {
  options.target = process.address();
  auto client = Client::Connect(options);
  return client.ok() ? *std::move(client) : nullptr;
}

absl::StatusOr<std::string> Cluster::Metrics(const ServerProcess& process) {
  return HttpGet(process.port("metrics_port"), "/metrics");
}

bool Cluster::WaitHealthyWorkers(int count) {
  for (int i = 0; i < 1500; ++i) {
    auto metrics = Metrics(*router_);
    if (metrics.ok() && SampleSum(*metrics, "lserve_router_worker_healthy") == count) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

bool Cluster::KvReturnsToZero(const ServerProcess& worker) {
  auto client = Connect(worker);
  for (int i = 0; i < 500 && client != nullptr; ++i) {
    auto load = client->Load();
    if (load.ok() && load->dense().used_pages() == 0 && load->streaming().used_pages() == 0 &&
        load->running() == 0 && load->waiting() == 0) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (client != nullptr) {
    auto load = client->Load();
    std::cerr << "KV still held: "
              << (load.ok() ? load->ShortDebugString() : load.status().ToString()) << "\n";
  }
  return false;
}

}  // namespace lserve::testing
