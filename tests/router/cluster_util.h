// A local lserve cluster of real processes on 127.0.0.1 for integration tests: a router,
// prefill and decode workers that register with it (decode workers optionally behind
// TcpProxy, for cutting or holding KV pushes), plus a unified reference worker; with the
// waits and checks the tests share, each bounded in time.
#ifndef LSERVE_TESTS_ROUTER_CLUSTER_UTIL_H_
#define LSERVE_TESTS_ROUTER_CLUSTER_UTIL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "tests/testing/process_util.h"
#include "tests/testing/requests.h"
#include "tests/testing/tcp_proxy.h"

namespace lserve::testing {

struct ClusterOptions {
  std::vector<std::string> worker_args;  // model and attention flags of every worker
  // Added for one role only (a GPU device, say).
  std::vector<std::string> prefill_args, decode_args, reference_args;
  std::vector<std::string> router_args;  // on top of the test defaults
  int prefill_workers = 2;
  int decode_workers = 2;
  bool proxy_decode = false;
  bool reference = true;  // also start a unified worker, not registered
  // How the test reaches the router and the workers (TLS files, API key).
  ClientOptions router_client;
  ClientOptions worker_client;
};

class Cluster {
 public:
  static absl::StatusOr<std::unique_ptr<Cluster>> Start(const ClusterOptions& options);

  ServerProcess& router() { return *router_; }
  ServerProcess& prefill(int i) { return *prefill_[i]; }
  ServerProcess& decode(int i) { return *decode_[i]; }
  TcpProxy& decode_proxy(int i) { return *proxies_[i]; }
  int num_prefill() const { return static_cast<int>(prefill_.size()); }
  int num_decode() const { return static_cast<int>(decode_.size()); }
  ServerProcess& reference() { return *reference_; }

  // With the options' TLS files and key for that kind of process.
  std::unique_ptr<Client> Connect(const ServerProcess& process);
  std::unique_ptr<Client> Connect(const ServerProcess& process, ClientOptions options);
  std::unique_ptr<Client> ConnectRouter() { return Connect(*router_); }
  absl::StatusOr<std::string> Metrics(const ServerProcess& process);

  // Until the router sees `count` healthy workers (30 s at most).
  bool WaitHealthyWorkers(int count);
  // Until the worker holds no page for a request and runs nothing (10 s at most).
  bool KvReturnsToZero(const ServerProcess& worker);

 private:
  Cluster() = default;
  absl::StatusOr<std::unique_ptr<ServerProcess>> StartWorker(const std::string& role,
                                                             TcpProxy* proxy);

  ClusterOptions options_;
  std::unique_ptr<ServerProcess> router_;
  std::vector<std::unique_ptr<ServerProcess>> prefill_, decode_;
  std::vector<std::unique_ptr<TcpProxy>> proxies_;
  std::unique_ptr<ServerProcess> reference_;
};

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_ROUTER_CLUSTER_UTIL_H_
