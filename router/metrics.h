// The router's Prometheus metrics: requests by status, TTFT and inter-token latency as
// clients see them, routing decisions by policy and pool, retries, circuit-breaker state
// per worker, and KV hand-off bytes and seconds.
#ifndef LSERVE_ROUTER_METRICS_H_
#define LSERVE_ROUTER_METRICS_H_

#include <set>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "common/metrics/registry.h"
#include "router/worker_registry.h"

namespace lserve {

class RouterMetrics {
 public:
  // Registers the families; circuit states and worker health are read from `registry`
  // at each scrape.
  static absl::StatusOr<std::unique_ptr<RouterMetrics>> Create(metrics::Registry* metrics,
                                                               WorkerRegistry* workers);

  void RequestFinished(const absl::Status& status);
  void TimeToFirstToken(double seconds) { ttft_->Observe(seconds); }
  void InterTokenLatency(double seconds) { itl_->Observe(seconds); }
  void RequestLatency(double seconds) { e2e_->Observe(seconds); }
  void Routed(std::string_view policy, std::string_view pool);
  void Retry(std::string_view reason);
  void Handoff(int64_t bytes, double seconds);
  // One series per worker seen, for the breaker and health gauges.
  void WatchWorker(const std::string& address);
  // Every worker of the registry now (call after each health round).
  void WatchAll();

 private:
  RouterMetrics() = default;

  metrics::Registry* metrics_ = nullptr;
  WorkerRegistry* workers_ = nullptr;
  metrics::Family<metrics::Counter>* requests_ = nullptr;
  metrics::Histogram* ttft_ = nullptr;
  metrics::Histogram* itl_ = nullptr;
  metrics::Histogram* e2e_ = nullptr;
  metrics::Family<metrics::Counter>* routed_ = nullptr;
  metrics::Family<metrics::Counter>* retries_ = nullptr;
  metrics::Counter* handoff_bytes_ = nullptr;
  metrics::Histogram* handoff_seconds_ = nullptr;
  std::mutex watched_mu_;
  std::set<std::string> watched_;
};

}  // namespace lserve

#endif  // LSERVE_ROUTER_METRICS_H_
