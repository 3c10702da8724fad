// The router's request logic against in-process fake workers: the unified and the
// disaggregated paths give the model's tokens; failures at every step of the hand-off
// retry on another worker or resume from the tokens already streamed, and leave no
// reservation or lease behind; request errors are not retried; the queue is bounded.
#include "router/router_handler.h"

#include <future>
#include <thread>

#include "gtest/gtest.h"
#include "tests/router/fake_worker.h"

namespace lserve {
namespace {

using testing::Continue;
using testing::FakeCluster;
using testing::FakeWorker;

constexpr char kP1[] = "p1:1", kP2[] = "p2:1", kD1[] = "d1:1", kD2[] = "d2:1";

struct Outcome {
  std::vector<int32_t> tokens;
  absl::Status status;
  v1::FinishReason reason = v1::FINISH_REASON_UNSPECIFIED;
};

class RouterHandlerTest : public ::testing::Test {
 protected:
  void SetUp() override { Build(RouterOptions{}); }

  void Build(RouterOptions options) {
    handler_.reset();
    registry_ = std::make_unique<WorkerRegistry>(&cluster_, RegistryOptions{});
    registry_->AddStatic(kP1, v1::WORKER_ROLE_PREFILL);
    registry_->AddStatic(kP2, v1::WORKER_ROLE_PREFILL);
    registry_->AddStatic(kD1, v1::WORKER_ROLE_DECODE);
    registry_->AddStatic(kD2, v1::WORKER_ROLE_DECODE);
    registry_->CheckAll();
    options.disaggregation_min_prompt_tokens = 32;
    options.retry_backoff = std::chrono::milliseconds(1);
    handler_ =
        std::make_unique<RouterHandler>(registry_.get(), std::make_unique<RoundRobinPolicy>(),
                                        std::make_unique<RoundRobinPolicy>(), options, nullptr);
  }

  Outcome Run(const v1::GenerateRequest& request, Cancellation* cancel = nullptr) {
    Outcome outcome;
    Cancellation own;
    net::GenerateSink sink = [&](const v1::GenerateResponse& r, bool final,
                                 const absl::Status& status) {
      for (const auto& token : r.tokens()) outcome.tokens.push_back(token.token_id());
      if (final) {
        outcome.status = status;
        outcome.reason = r.finish_reason();
      }
    };
    handler_->Generate(request, std::chrono::system_clock::now() + std::chrono::seconds(30), sink,
                       cancel != nullptr ? cancel : &own);
    return outcome;
  }

  FakeWorker& W(const char* address) { return cluster_.worker(address); }

  void ExpectNothingHeld() {
    for (const char* address : {kP1, kP2, kD1, kD2}) {
      EXPECT_EQ(W(address).reservations(), 0u) << address;
      EXPECT_EQ(W(address).leases(), 0u) << address;
    }
  }

  FakeCluster cluster_;
  std::unique_ptr<WorkerRegistry> registry_;
  std::unique_ptr<RouterHandler> handler_;
};

v1::GenerateRequest Request(int prompt_tokens, int max_tokens, const std::string& id = "") {
  v1::GenerateRequest request;
  request.set_request_id(id);
  for (int i = 0; i < prompt_tokens; ++i) request.add_prompt_token_ids(i % 50 + 7);
  request.mutable_sampling()->set_max_tokens(max_tokens);
  return request;
}

std::vector<int32_t> Expected(const v1::GenerateRequest& request, int count) {
  return Continue({request.prompt_token_ids().begin(), request.prompt_token_ids().end()}, count);
}

TEST_F(RouterHandlerTest, ShortPromptsRunUnifiedOnTheDecodePool) {
  const v1::GenerateRequest request = Request(10, 6);
  const Outcome outcome = Run(request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.tokens, Expected(request, 6));
  EXPECT_EQ(outcome.reason, v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(W(kD1).generate_calls + W(kD2).generate_calls, 1);
  EXPECT_EQ(W(kP1).prefill_calls + W(kP2).prefill_calls, 0);
}

TEST_F(RouterHandlerTest, LongPromptsHandOffFromPrefillToDecode) {
  const v1::GenerateRequest request = Request(40, 9);
  const Outcome outcome = Run(request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.tokens, Expected(request, 9));
  EXPECT_EQ(W(kP1).prefill_calls + W(kP2).prefill_calls, 1);
  EXPECT_EQ(W(kD1).decode_calls + W(kD2).decode_calls, 1);
  ExpectNothingHeld();
}

TEST_F(RouterHandlerTest, OneTokenRequestsEndAfterThePrefill) {
  const v1::GenerateRequest request = Request(40, 1);
  const Outcome outcome = Run(request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.tokens, Expected(request, 1));
  EXPECT_EQ(W(kD1).decode_calls + W(kD2).decode_calls, 0);
  ExpectNothingHeld();
}

TEST_F(RouterHandlerTest, ADecodeWorkerDyingMidStreamIsResumedElsewhere) {
  W(kD1).fail_stream_after = 3;  // round-robin picks d1 first
  const v1::GenerateRequest request = Request(40, 12);
  const Outcome outcome = Run(request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  // The first token from the prefill, 3 streamed, then the rest resumed: no gap, no repeat.
  EXPECT_EQ(outcome.tokens, Expected(request, 12));
  ExpectNothingHeld();
}

TEST_F(RouterHandlerTest, AFailedPrefillReleasesTheReservationAndRetries) {
  W(kP1).fail_prefill = true;
  W(kP2).fail_prefill = true;
  const v1::GenerateRequest request = Request(40, 5);
  const Outcome outcome = Run(request);
  // Both prefill workers fail; the third attempt finds no prefill worker left and prefills
  // on a decode worker instead.
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.tokens, Expected(request, 5));
  EXPECT_EQ(W(kP1).prefill_calls + W(kP2).prefill_calls, 2);
  ExpectNothingHeld();
}

TEST_F(RouterHandlerTest, ACutTransferGoesToAnotherDecodeWorker) {
  // Round-robin picks d1 and p1 first; p1's first push is cut, and p1 stays alive.
  W(kP1).cut_transfers = 1;
  const v1::GenerateRequest request = Request(40, 7);
  const Outcome outcome = Run(request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.tokens, Expected(request, 7));
  EXPECT_EQ(W(kP1).transfer_calls, 2);
  EXPECT_EQ(W(kD1).decode_calls, 0);
  EXPECT_EQ(W(kD2).decode_calls, 1);
  ExpectNothingHeld();
}

TEST_F(RouterHandlerTest, APrefillWorkerDyingMidTransferResumesFromTheFirstToken) {
  W(kP1).die_on_transfer = true;
  W(kP2).die_on_transfer = true;
  const v1::GenerateRequest request = Request(40, 7);
  const Outcome outcome = Run(request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status;
  EXPECT_EQ(outcome.tokens, Expected(request, 7));
  // One prefill worker died; the hand-off was not retried from it, and the request went
  // on from the prompt and its first token on a decode worker.
  EXPECT_EQ(W(kP1).transfer_calls + W(kP2).transfer_calls, 1);
  EXPECT_EQ(W(kD1).generate_calls + W(kD2).generate_calls, 1);
  EXPECT_EQ(W(kD1).reservations() + W(kD2).reservations(), 0u);
}

TEST_F(RouterHandlerTest, RequestErrorsAreNotRetried) {
  W(kD1).generate_error = absl::InvalidArgumentError("bad sampling values");
  W(kD2).generate_error = absl::InvalidArgumentError("bad sampling values");
  const Outcome outcome = Run(Request(5, 3));
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(W(kD1).generate_calls + W(kD2).generate_calls, 1);
}

TEST_F(RouterHandlerTest, EveryWorkerDownGivesUnavailableAfterTheAttempts) {
  for (const char* address : {kP1, kP2, kD1, kD2}) W(address).dead = true;
  const Outcome outcome = Run(Request(5, 3));
  EXPECT_EQ(outcome.status.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(outcome.status.message().find("attempts"), std::string::npos) << outcome.status;
}

TEST_F(RouterHandlerTest, AFullWorkerIsSkippedWithoutOpeningItsBreaker) {
  W(kD1).generate_error = absl::ResourceExhaustedError("queue full");
  W(kD2).generate_error = absl::ResourceExhaustedError("queue full");
  for (int i = 0; i < 5; ++i) Run(Request(5, 2));
  W(kD1).generate_error = absl::OkStatus();
  W(kD2).generate_error = absl::OkStatus();
  for (auto& worker : registry_->All()) {
    EXPECT_EQ(worker->breaker.state(), CircuitBreaker::State::kClosed) << worker->address;
  }
  EXPECT_TRUE(Run(Request(5, 2)).status.ok());
}

TEST_F(RouterHandlerTest, ValidationNamesTheProblem) {
  RouterOptions options;
  options.max_prompt_tokens = 100;
  options.max_tokens = 50;
  Build(options);
  v1::GenerateRequest text;
  text.set_prompt_text("hello");
  EXPECT_EQ(Run(text).status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Run(v1::GenerateRequest()).status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Run(Request(101, 5)).status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Run(Request(10, 51)).status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Run(Request(10, -1)).status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(W(kD1).generate_calls + W(kD2).generate_calls, 0);
  // max_tokens 0 means the default of 16.
  EXPECT_EQ(Run(Request(10, 0)).tokens.size(), 16u);
}

TEST_F(RouterHandlerTest, AFullRouterAnswersResourceExhaustedAndAbortStopsARequest) {
  RouterOptions options;
  options.max_in_flight = 1;
  options.max_queue = 0;
  Build(options);
  W(kD1).hold_streams = true;
  W(kD2).hold_streams = true;
  Cancellation cancel;
  auto running =
      std::async(std::launch::async, [&] { return Run(Request(5, 4, "held"), &cancel); });
  for (int i = 0; i < 2000 && W(kD1).generate_calls + W(kD2).generate_calls == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const Outcome refused = Run(Request(5, 4));
  EXPECT_EQ(refused.status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status.message().find("retry"), std::string::npos);
  EXPECT_EQ(handler_->Abort("nobody").code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(handler_->Abort("held").ok());
  EXPECT_EQ(running.get().status.code(), absl::StatusCode::kCancelled);
  W(kD1).hold_streams = false;
  W(kD2).hold_streams = false;
  EXPECT_TRUE(Run(Request(5, 4)).status.ok());
}

TEST_F(RouterHandlerTest, LoadSumsTheWorkers) {
  const v1::Load load = handler_->Load();
  EXPECT_EQ(load.role(), "router");
  EXPECT_EQ(load.running(), 0);
  auto info = handler_->ModelInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->name(), "fake");
}

}  // namespace
}  // namespace lserve
