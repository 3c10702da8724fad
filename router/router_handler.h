// The router's request logic, transport-free (DESIGN.md §1, §4): admission with a bounded
// queue, validation and limits, the choice of decode and prefill workers by policy, the
// disaggregated hand-off (reserve on D, prefill on P, KV from P to D, decode on D), and on
// any failure a retry on another worker or a resumption of the tokens already streamed,
// with every reservation and lease released on every path.
#ifndef LSERVE_ROUTER_ROUTER_HANDLER_H_
#define LSERVE_ROUTER_ROUTER_HANDLER_H_

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "absl/status/statusor.h"
#include "lserve/v1/generation.pb.h"
#include "net/generate_stream_reactor.h"
#include "router/metrics.h"
#include "router/routing_policy.h"
#include "router/worker_registry.h"

namespace lserve {

struct RouterOptions {
  int64_t disaggregation_min_prompt_tokens = 256;
  int max_attempts = 3;
  std::chrono::milliseconds retry_backoff{50};
  int max_prompt_tokens = 0;  // 0: no router limit
  int max_tokens = 0;         // 0: no router limit
  std::chrono::milliseconds kv_lease{30000};
  int max_in_flight = 256;
  int max_queue = 1024;
};

class RouterHandler {
 public:
  // registry, policies and metrics (nullable) must outlive the handler.
  RouterHandler(WorkerRegistry* registry, std::unique_ptr<RoutingPolicy> prefill_policy,
                std::unique_ptr<RoutingPolicy> decode_policy, RouterOptions options,
                RouterMetrics* metrics);

  // Runs one request to its end on the calling thread: tokens go to `sink` as they come,
  // then the final response (finish reason, timings) or the error. `cancel` stops it.
  void Generate(const v1::GenerateRequest& request, Deadline deadline,
                const net::GenerateSink& sink, Cancellation* cancel);
  absl::Status Abort(const std::string& request_id);
  absl::StatusOr<v1::ModelInfo> ModelInfo();
  v1::Load Load();

  struct Run;  // one request's state (router_run.h)

 private:
  absl::Status Validate(const v1::GenerateRequest& request) const;
  absl::Status Admit(Deadline deadline);
  void Leave();
  absl::Status Execute(Run& run);
  // One attempt each. A failed attempt has excluded the worker it blames from the next.
  absl::Status Unified(Run& run, WorkerState& worker);
  absl::Status Disaggregated(Run& run, WorkerState& decode, WorkerState& prefill);
  absl::StatusOr<uint64_t> Reserve(Run& run, WorkerState& decode);
  // Moves the prefill worker's leased KV into `reservation` on `decode`.
  absl::Status Transfer(Run& run, WorkerState& decode, uint64_t reservation, WorkerState& prefill,
                        const v1::PrefillResponse& prefilled);
  absl::Status Decode(Run& run, WorkerState& decode, uint64_t reservation,
                      const v1::GeneratedToken& first);
  // Blames `worker` for `status` unless the request or the client is at fault.
  void Failed(Run& run, WorkerState& worker, const absl::Status& status);
  // By the pool's policy, avoiding the workers that failed this request, never `never`.
  std::shared_ptr<WorkerState> Pick(Run& run, Pool pool, const std::string& never = "");
  void Emit(Run& run, const v1::GenerateResponse& response);

  WorkerRegistry* registry_;
  std::unique_ptr<RoutingPolicy> prefill_policy_;
  std::unique_ptr<RoutingPolicy> decode_policy_;
  RouterOptions options_;
  RouterMetrics* metrics_;
  std::mutex admission_mu_;
  std::condition_variable admission_cv_;
  int in_flight_ = 0;
  int queued_ = 0;
  std::mutex ids_mu_;
  std::unordered_map<std::string, Cancellation*> live_;  // by client request id
};

// Statuses that say "the request is wrong" rather than "this worker failed".
bool IsRequestError(const absl::Status& status);

}  // namespace lserve

#endif  // LSERVE_ROUTER_ROUTER_HANDLER_H_
