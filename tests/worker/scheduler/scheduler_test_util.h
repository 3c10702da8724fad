// Drives a Scheduler until its requests finish, collecting what each one produced.
#ifndef LSERVE_TESTS_WORKER_SCHEDULER_SCHEDULER_TEST_UTIL_H_
#define LSERVE_TESTS_WORKER_SCHEDULER_SCHEDULER_TEST_UTIL_H_

#include <map>
#include <vector>

#include "gtest/gtest.h"
#include "worker/scheduler/scheduler.h"

namespace lserve::testing {

struct Outcome {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  bool finished = false;
  FinishReason reason = FinishReason::kNone;
  absl::Status status;
  RequestTimings timings;
};

inline void Collect(const std::vector<RequestEvent>& events, std::map<RequestId, Outcome>* out) {
  for (const RequestEvent& event : events) {
    Outcome& o = (*out)[event.id];
    EXPECT_FALSE(o.finished) << "request " << event.id << " reported after finishing";
    for (const GeneratedToken& token : event.tokens) {
      o.tokens.push_back(token.id);
      o.logprobs.push_back(token.logprob);
    }
    if (event.finished) {
      o.finished = true;
      o.reason = event.finish_reason;
      o.status = event.status;
      o.timings = event.timings;
    }
  }
}

// Steps until nothing is live (at most max_steps steps).
inline std::map<RequestId, Outcome> RunAll(Scheduler& scheduler, int max_steps = 100000) {
  std::map<RequestId, Outcome> out;
  for (int i = 0; i < max_steps && scheduler.HasWork(); ++i) Collect(scheduler.Step(), &out);
  EXPECT_FALSE(scheduler.HasWork()) << "requests still live after " << max_steps << " steps";
  return out;
}

inline GenerationRequest Greedy(std::vector<int32_t> prompt, int max_tokens, int priority = 0) {
  GenerationRequest request;
  request.prompt = std::move(prompt);
  request.sampling.max_tokens = max_tokens;
  request.sampling.logprobs = 0;
  request.priority = priority;
  return request;
}

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_WORKER_SCHEDULER_SCHEDULER_TEST_UTIL_H_
