// Runs a fixed set of requests to completion through a Scheduler: the command-line
// generator, offline benchmarks and tests use it.
#ifndef LSERVE_WORKER_SCHEDULER_OFFLINE_H_
#define LSERVE_WORKER_SCHEDULER_OFFLINE_H_

#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "worker/engine.h"
#include "worker/scheduler/request.h"
#include "worker/scheduler/scheduler.h"

namespace lserve {

struct GenerationResult {
  absl::Status status;  // a bad request fails alone; the others still run
  std::vector<int32_t> tokens;
  std::vector<GeneratedToken> details;  // with logprobs when asked for
  FinishReason finish_reason = FinishReason::kNone;
  RequestTimings timings;
};

// Called for each generated token as soon as it is sampled.
using TokenCallback = std::function<void(size_t request_index, int32_t token)>;

// Submits every request (in order), steps until all finish, and returns their results.
// Invalid options fail every request with INVALID_ARGUMENT.
std::vector<GenerationResult> Generate(Engine& engine,
                                       const std::vector<GenerationRequest>& requests,
                                       const SchedulerOptions& options,
                                       const TokenCallback& on_token = nullptr);

}  // namespace lserve

#endif  // LSERVE_WORKER_SCHEDULER_OFFLINE_H_
