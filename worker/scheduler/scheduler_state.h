// The scheduler's per-request state (internal to worker/scheduler).
#ifndef LSERVE_WORKER_SCHEDULER_SCHEDULER_STATE_H_
#define LSERVE_WORKER_SCHEDULER_SCHEDULER_STATE_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "kvstore/kv_snapshot.h"
#include "worker/engine.h"
#include "worker/scheduler/request.h"
#include "worker/scheduler/scheduler.h"

namespace lserve {

struct Scheduler::State {
  enum class Where { kWaiting, kRunning, kSwapped };

  RequestId id = 0;
  GenerationRequest request;
  uint64_t order = 0;  // arrival order
  SteadyClock::time_point arrival;
  std::optional<SteadyClock::time_point> first_scheduled;
  Where where = Where::kWaiting;
  // The prompt followed by the generated tokens; the KV holds the first `computed`.
  std::vector<int32_t> context;
  int64_t generated = 0;
  int64_t computed = 0;
  bool abort = false;
  std::optional<KvSnapshot> swap;
  RequestTimings timings;

  int64_t remaining() const { return static_cast<int64_t>(context.size()) - computed; }
  // The next input is the last sampled token, fed as a decode step.
  bool decoding() const { return generated > 0 && remaining() == 1; }
  // Best first: higher priority, then earlier arrival.
  bool Before(const State& other) const {
    return request.priority != other.request.priority ? request.priority > other.request.priority
                                                      : order < other.order;
  }
};

struct Scheduler::Planned {
  State* state = nullptr;
  StepInput input;

  // The last prompt chunk of a request whose KV streams out while it is computed.
  bool StreamsKv() const {
    return state->request.stream_kv != nullptr && state->request.keep_kv &&
           input.phase == StepPhase::kPrefill &&
           static_cast<int64_t>(input.tokens.size()) == state->remaining();
  }
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SCHEDULER_SCHEDULER_STATE_H_
