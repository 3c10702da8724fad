// One request's state inside the router, shared by router_handler.cc and
// router_handoff.cc: what was asked, what was streamed so far, and which workers failed it.
#ifndef LSERVE_ROUTER_ROUTER_RUN_H_
#define LSERVE_ROUTER_ROUTER_RUN_H_

#include <algorithm>
#include <chrono>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "router/router_handler.h"

namespace lserve {

struct RouterHandler::Run {
  v1::GenerateRequest original;
  Deadline deadline;
  const net::GenerateSink* sink = nullptr;
  Cancellation* cancel = nullptr;
  std::chrono::steady_clock::time_point arrival, admitted, first_token, last_token;
  std::vector<int32_t> emitted;
  bool finished = false;
  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
  v1::Timings worker_timings;
  std::vector<std::string> exclude;  // workers that failed this request
  v1::Timings prefill_timings;       // from a prefill worker, when there was a hand-off
  bool handed_off = false;
  std::mutex attempt_mu;
  Cancellation* attempt = nullptr;  // the call on a worker now, for the client's cancel

  // The request as it stands: the prompt plus what was streamed, what is left to generate,
  // and the sampling stream's position.
  v1::GenerateRequest Current() const {
    v1::GenerateRequest current = original;
    for (int32_t token : emitted) current.add_prompt_token_ids(token);
    v1::SamplingParams* s = current.mutable_sampling();
    s->set_max_tokens(
        std::max<int>(0, original.sampling().max_tokens() - static_cast<int>(emitted.size())));
    s->set_draw_offset(original.sampling().draw_offset() + emitted.size());
    return current;
  }
};

// The cancellation of one call on a worker: fired by the client's cancel (through the
// run) or by the registry when the worker is lost.
class AttemptCancellation {
 public:
  AttemptCancellation(RouterHandler::Run& run, WorkerState& worker) : run_(run), worker_(worker) {
    {
      std::lock_guard<std::mutex> lock(run_.attempt_mu);
      run_.attempt = &cancel_;
    }
    worker_.Attach(&cancel_);
    if (run_.cancel->cancelled()) cancel_.Cancel();
  }
  ~AttemptCancellation() {
    worker_.Detach(&cancel_);
    std::lock_guard<std::mutex> lock(run_.attempt_mu);
    run_.attempt = nullptr;
  }
  Cancellation* get() { return &cancel_; }
  // A call cancelled without the client asking was cut because its worker was lost.
  absl::Status Explain(const absl::Status& status) const {
    if (status.ok() || !cancel_.cancelled() || run_.cancel->cancelled()) return status;
    return absl::UnavailableError(
        absl::StrCat("worker ", worker_.address, " stopped answering: ", status.message()));
  }

 private:
  RouterHandler::Run& run_;
  WorkerState& worker_;
  Cancellation cancel_;
};

}  // namespace lserve

#endif  // LSERVE_ROUTER_ROUTER_RUN_H_
