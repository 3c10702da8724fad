// In-process workers for handler tests: a tiny CPU engine behind a WorkerHandler, and
// helpers that build requests and run streams to their end.
#ifndef LSERVE_TESTS_WORKER_SERVICE_WORKER_TEST_UTIL_H_
#define LSERVE_TESTS_WORKER_SERVICE_WORKER_TEST_UTIL_H_

#include <future>
#include <memory>
#include <vector>

#include "tests/worker/engine_test_util.h"
#include "worker/service/worker_handler.h"

namespace lserve::testing {

struct Worker {
  explicit Worker(v1::WorkerRole role, KvTransport* transport = nullptr) {
    engine = testing::MakeTinyEngine();
    scheduler = *Scheduler::Create(engine.get(), SchedulerOptions{});
    loop = std::make_unique<EngineLoop>(engine.get(), scheduler.get());
    WorkerIdentity identity;
    identity.model_name = "tiny";
    identity.role = role;
    identity.backend = "cpu";
    identity.max_context = 4096;
    handler = std::make_unique<WorkerHandler>(loop.get(), identity, transport, nullptr);
  }
  std::unique_ptr<Engine> engine;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<EngineLoop> loop;
  std::unique_ptr<WorkerHandler> handler;
};

struct Collected {
  std::vector<int32_t> tokens;
  int responses = 0;
  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
  absl::Status status;
};

// Runs a stream to its end and returns what it produced.
inline Collected Stream(const std::function<absl::StatusOr<RequestId>(ResponseSink)>& start) {
  auto collected = std::make_shared<Collected>();
  std::promise<void> done;
  absl::StatusOr<RequestId> id =
      start([&, collected](const v1::GenerateResponse& r, bool final, const absl::Status& s) {
        ++collected->responses;
        for (const auto& token : r.tokens()) collected->tokens.push_back(token.token_id());
        if (!final) return;
        collected->reason = r.finish_reason();
        collected->status = s;
        done.set_value();
      });
  if (!id.ok()) {
    collected->status = id.status();
    return *collected;
  }
  done.get_future().wait();
  return *collected;
}

inline v1::GenerateRequest Request(std::vector<int32_t> prompt, int max_tokens) {
  v1::GenerateRequest request;
  for (int32_t id : prompt) request.add_prompt_token_ids(id);
  request.mutable_sampling()->set_max_tokens(max_tokens);
  return request;
}

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_WORKER_SERVICE_WORKER_TEST_UTIL_H_
