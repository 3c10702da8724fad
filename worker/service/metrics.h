// The worker's Prometheus metrics (DESIGN.md §4): latencies per request and token, step
// times, queue and KV state, preemptions, prefix cache, tokens, page selection, attention
// tiles, and KV hand-offs. Names follow common/metrics/registry.h. Kubernetes inference
// gateways read queue length, running requests and KV usage: point them at
// lserve_num_requests_waiting, lserve_num_requests_running and lserve_kv_cache_usage_ratio
// (the same types and meanings as vLLM's vllm:num_requests_waiting, ...).
#ifndef LSERVE_WORKER_SERVICE_METRICS_H_
#define LSERVE_WORKER_SERVICE_METRICS_H_

#include <string_view>

#include "absl/status/statusor.h"
#include "common/metrics/registry.h"
#include "worker/scheduler/request.h"
#include "worker/service/engine_loop.h"

namespace lserve {

class WorkerMetrics {
 public:
  // Registers every family on `registry`; the state gauges read `loop` at each scrape.
  static absl::StatusOr<std::unique_ptr<WorkerMetrics>> Create(metrics::Registry* registry,
                                                               const EngineLoop* loop);

  void TimeToFirstToken(double seconds) { ttft_->Observe(seconds); }
  void InterTokenLatency(double seconds) { itl_->Observe(seconds); }
  void RequestFinished(const absl::Status& status, FinishReason reason,
                       const RequestTimings& timings);
  void RequestRefused(const absl::Status& status);
  // One engine step: its duration, and what the engine counted meanwhile.
  void Step(double seconds, const LoopSnapshot& before, const LoopSnapshot& after);
  void KvHandoff(std::string_view direction, std::string_view transport, int64_t bytes,
                 double seconds);
  void KvTransportFallback(std::string_view reason);
  // A hand-off started during the prefill was collected by TransferKv.
  void KvHandoffDuringPrefill(bool ok);

 private:
  WorkerMetrics() = default;

  metrics::Registry* registry_ = nullptr;
  metrics::Histogram* ttft_ = nullptr;
  metrics::Histogram* itl_ = nullptr;
  metrics::Histogram* e2e_ = nullptr;
  metrics::Histogram* queue_ = nullptr;
  metrics::Family<metrics::Histogram>* step_ = nullptr;
  metrics::Family<metrics::Counter>* requests_ = nullptr;
  metrics::Counter* prompt_tokens_ = nullptr;
  metrics::Counter* generation_tokens_ = nullptr;
  metrics::Counter* prefill_tokens_ = nullptr;
  metrics::Counter* preemptions_ = nullptr;
  metrics::Counter* prefix_queried_ = nullptr;
  metrics::Counter* prefix_hits_ = nullptr;
  metrics::Counter* selection_recomputed_ = nullptr;
  metrics::Counter* selection_reused_ = nullptr;
  metrics::Counter* tiles_visited_ = nullptr;
  metrics::Counter* tiles_skipped_ = nullptr;
  metrics::Family<metrics::Counter>* handoff_bytes_ = nullptr;
  metrics::Family<metrics::Histogram>* handoff_seconds_ = nullptr;
  metrics::Family<metrics::Counter>* transport_fallbacks_ = nullptr;
  metrics::Family<metrics::Counter>* handoffs_during_prefill_ = nullptr;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SERVICE_METRICS_H_
