// The router's view of its workers: the static pool from config plus workers that
// register and heartbeat; for each, its role, health (active checks), reported load,
// circuit breaker and the requests the router has in flight on it.
#ifndef LSERVE_ROUTER_WORKER_REGISTRY_H_
#define LSERVE_ROUTER_WORKER_REGISTRY_H_

#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "lserve/v1/config.pb.h"
#include "lserve/v1/generation.pb.h"
#include "router/circuit_breaker.h"
#include "router/worker_client.h"

namespace lserve {

enum class Pool { kPrefill, kDecode };

struct WorkerState {
  WorkerState(std::string address, v1::WorkerRole role, std::shared_ptr<WorkerClient> client,
              int breaker_failures, CircuitBreaker::Clock::duration cooldown)
      : address(std::move(address)),
        role(role),
        client(std::move(client)),
        breaker(breaker_failures, cooldown) {}

  const std::string address;
  const v1::WorkerRole role;
  const std::shared_ptr<WorkerClient> client;
  CircuitBreaker breaker;
  std::atomic<int> in_flight{0};  // the router's requests on it now
  // Written by the health checker.
  std::atomic<bool> healthy{false};
  std::atomic<bool> draining{false};
  // Under the registry's lock.
  bool registered = false;  // dropped when its heartbeats stop
  std::chrono::steady_clock::time_point last_heartbeat;

  bool Serves(Pool pool) const;
  v1::Load load() const;  // as last reported
  void set_load(v1::Load load);

  // The router's calls on this worker, cancelled at once when it is lost (dropped, or
  // failing health checks in a row) rather than left waiting for their deadlines.
  void Attach(Cancellation* call);
  void Detach(Cancellation* call);
  void CancelCalls();
  int failed_checks = 0;  // consecutive; under the registry's lock

 private:
  mutable std::mutex load_mu_;
  v1::Load load_;
  std::mutex calls_mu_;
  std::set<Cancellation*> calls_;
};

struct RegistryOptions {
  std::chrono::milliseconds health_interval{1000};
  std::chrono::milliseconds heartbeat_timeout{5000};
  int breaker_failures = 3;
  int lost_after_failed_checks = 3;  // then its calls are cancelled
  std::chrono::milliseconds breaker_cooldown{5000};
};

class WorkerRegistry {
 public:
  WorkerRegistry(WorkerClientFactory* factory, RegistryOptions options);
  ~WorkerRegistry();  // stops the health checker

  void AddStatic(const std::string& address, v1::WorkerRole role);
  // A worker's registration or heartbeat.
  absl::Status Register(const std::string& address, v1::WorkerRole role);

  // Healthy, not draining, breaker closed (or admitting its half-open trial), in `pool`,
  // minus `exclude`. Sorted by address.
  std::vector<std::shared_ptr<WorkerState>> Candidates(Pool pool,
                                                       const std::vector<std::string>& exclude);
  std::vector<std::shared_ptr<WorkerState>> All() const;
  bool HasPool(Pool pool) const;

  void ReportSuccess(WorkerState& worker);
  void ReportFailure(WorkerState& worker);

  // One round of health checks and load polls of every worker, in parallel.
  void CheckAll();
  // Checks every health_interval on a background thread, calling after_round (which may
  // be empty) after each round.
  void StartChecking(std::function<void()> after_round = {});

 private:
  void CheckLoop();

  WorkerClientFactory* factory_;
  RegistryOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<WorkerState>> workers_;
  std::mutex wake_mu_;
  std::condition_variable wake_;
  bool stop_ = false;
  bool check_now_ = false;
  std::function<void()> after_round_;
  std::thread checker_;
};

}  // namespace lserve

#endif  // LSERVE_ROUTER_WORKER_REGISTRY_H_
