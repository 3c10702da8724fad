#include "router/metrics.h"

#include <cctype>

#include "common/status_macros.h"

namespace lserve {

absl::StatusOr<std::unique_ptr<RouterMetrics>> RouterMetrics::Create(metrics::Registry* r,
                                                                     WorkerRegistry* workers) {
  std::unique_ptr<RouterMetrics> m(new RouterMetrics());
  m->metrics_ = r;
  m->workers_ = workers;
  ASSIGN_OR_RETURN(std::vector<double> latency, metrics::ExponentialBuckets(0.001, 2.0, 18));
  ASSIGN_OR_RETURN(std::vector<double> token, metrics::ExponentialBuckets(0.0005, 2.0, 16));
  ASSIGN_OR_RETURN(m->requests_, r->AddCounter("lserve_router_requests_total",
                                               "Requests answered, by gRPC status.", {"status"}));
  ASSIGN_OR_RETURN(auto* ttft,
                   r->AddHistogram("lserve_router_time_to_first_token_seconds",
                                   "Time to the first token as clients see it.", {}, latency));
  ASSIGN_OR_RETURN(auto* itl, r->AddHistogram("lserve_router_inter_token_latency_seconds",
                                              "Time between tokens as clients see it.", {}, token));
  ASSIGN_OR_RETURN(auto* e2e,
                   r->AddHistogram("lserve_router_request_latency_seconds",
                                   "Time from arrival to the end of a request.", {}, latency));
  ASSIGN_OR_RETURN(m->routed_,
                   r->AddCounter("lserve_router_routing_decisions_total",
                                 "Workers picked, by policy and pool.", {"policy", "pool"}));
  ASSIGN_OR_RETURN(m->retries_,
                   r->AddCounter("lserve_router_retries_total",
                                 "Attempts repeated after a failure, by cause.", {"reason"}));
  ASSIGN_OR_RETURN(auto* bytes, r->AddCounter("lserve_router_kv_handoff_bytes_total",
                                              "KV bytes handed from prefill to decode workers."));
  ASSIGN_OR_RETURN(auto* seconds, r->AddHistogram("lserve_router_kv_handoff_seconds",
                                                  "Duration of one KV hand-off.", {}, latency));
  m->ttft_ = &ttft->LabelsOrDie({});
  m->itl_ = &itl->LabelsOrDie({});
  m->e2e_ = &e2e->LabelsOrDie({});
  m->handoff_bytes_ = &bytes->LabelsOrDie({});
  m->handoff_seconds_ = &seconds->LabelsOrDie({});
  return m;
}

void RouterMetrics::RequestFinished(const absl::Status& status) {
  std::string name = absl::StatusCodeToString(status.code());
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  requests_->LabelsOrDie({name}).Increment();
}

void RouterMetrics::Routed(std::string_view policy, std::string_view pool) {
  routed_->LabelsOrDie({policy, pool}).Increment();
}

void RouterMetrics::Retry(std::string_view reason) { retries_->LabelsOrDie({reason}).Increment(); }

void RouterMetrics::Handoff(int64_t bytes, double seconds) {
  handoff_bytes_->Increment(static_cast<double>(bytes));
  handoff_seconds_->Observe(seconds);
}

void RouterMetrics::WatchWorker(const std::string& address) {
  {
    std::lock_guard<std::mutex> lock(watched_mu_);
    if (!watched_.insert(address).second) return;
  }
  // 0 closed, 1 half open, 2 open; -1 once the worker left the registry.
  WorkerRegistry* workers = workers_;
  (void)metrics_->AddGaugeCallback("lserve_router_circuit_state",
                                   "Circuit breaker of each worker: 0 closed, 1 half open, 2 open.",
                                   {{"worker", address}}, [workers, address] {
                                     for (const auto& worker : workers->All()) {
                                       if (worker->address != address) continue;
                                       switch (worker->breaker.state()) {
                                         case CircuitBreaker::State::kClosed:
                                           return 0.0;
                                         case CircuitBreaker::State::kHalfOpen:
                                           return 1.0;
                                         case CircuitBreaker::State::kOpen:
                                           return 2.0;
                                       }
                                     }
                                     return -1.0;
                                   });
  (void)metrics_->AddGaugeCallback("lserve_router_worker_healthy",
                                   "1 when the worker answers health checks and serves.",
                                   {{"worker", address}}, [workers, address] {
                                     for (const auto& worker : workers->All()) {
                                       if (worker->address == address)
                                         return worker->healthy && !worker->draining ? 1.0 : 0.0;
                                     }
                                     return 0.0;
                                   });
}

}  // namespace lserve

namespace lserve {

void RouterMetrics::WatchAll() {
  for (const auto& worker : workers_->All()) WatchWorker(worker->address);
}

}  // namespace lserve
