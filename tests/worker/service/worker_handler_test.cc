// The worker's handler without a network: request validation, event streaming, abort and
// cancellation, and the whole hand-off (prefill, KV over the wire format, decode) between
// two in-process workers.
#include "worker/service/worker_handler.h"

#include <chrono>
#include <future>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/worker/engine_test_util.h"
#include "tests/worker/service/worker_test_util.h"
#include "worker/scheduler/offline.h"

namespace lserve {
namespace {

using testing::Collected;
using testing::Request;
using testing::Stream;
using testing::Worker;

TEST(WorkerHandlerTest, RejectsBadRequestsWithClearStatuses) {
  Worker w(v1::WORKER_ROLE_UNIFIED);
  auto code = [&](const v1::GenerateRequest& r) {
    return w.handler->StartGenerate(r, std::nullopt, [](auto&&...) {}).status().code();
  };
  EXPECT_EQ(code(Request({}, 4)), absl::StatusCode::kInvalidArgument);
  v1::GenerateRequest text = Request({1}, 4);
  text.set_prompt_text("hello");
  EXPECT_EQ(code(text), absl::StatusCode::kInvalidArgument);
  v1::GenerateRequest model = Request({1}, 4);
  model.set_model("llama-70b");
  EXPECT_EQ(code(model), absl::StatusCode::kNotFound);
  EXPECT_EQ(code(Request(std::vector<int32_t>(4090, 7), 16)), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(Request({1, 99999}, 4)), absl::StatusCode::kInvalidArgument);
  v1::GenerateRequest bad = Request({1, 2}, 4);
  bad.mutable_sampling()->set_temperature(-1);
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument);
  bad = Request({1, 2}, 4);
  bad.mutable_sampling()->set_top_p(1.5f);
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument);
  bad = Request({1, 2}, 4);
  bad.mutable_sampling()->set_logprobs(true);
  bad.mutable_sampling()->set_top_logprobs(25);
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument);
  bad = Request({1, 2}, 4);
  bad.mutable_sampling()->add_stop_strings("\n");
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.engine->kv_store().Usage().dense_used, 0);
}

TEST(WorkerHandlerTest, StreamsTheOfflineEnginesTokensThenTheOutcome) {
  Worker w(v1::WORKER_ROLE_UNIFIED);
  v1::GenerateRequest request = Request(testing::Ids(30, 1), 12);
  request.mutable_sampling()->set_temperature(0.8f);
  request.mutable_sampling()->set_seed(5);
  const Collected got = Stream([&](ResponseSink sink) {
    return w.handler->StartGenerate(request, std::nullopt, std::move(sink));
  });
  ASSERT_TRUE(got.status.ok()) << got.status;
  EXPECT_EQ(got.reason, v1::FINISH_REASON_LENGTH);
  GenerationRequest offline;
  offline.prompt = testing::Ids(30, 1);
  offline.sampling.max_tokens = 12;
  offline.sampling.temperature = 0.8f;
  offline.sampling.seed = 5;
  auto engine = testing::MakeTinyEngine();
  EXPECT_EQ(got.tokens, Generate(*engine, {offline}, SchedulerOptions{})[0].tokens);
}

TEST(WorkerHandlerTest, AbortByClientIdAndCancelFreeEveryPage) {
  Worker w(v1::WORKER_ROLE_UNIFIED);
  v1::GenerateRequest request = Request(testing::Ids(40, 2), 3000);
  request.set_request_id("client-7");
  std::promise<absl::Status> outcome;
  bool first = true;
  ASSERT_TRUE(
      w.handler
          ->StartGenerate(request, std::nullopt,
                          [&](const v1::GenerateResponse&, bool final, const absl::Status& s) {
                            if (final) outcome.set_value(s);
                            if (first) first = false;
                          })
          .ok());
  // A second live request may not take the same id.
  EXPECT_EQ(w.handler->StartGenerate(request, std::nullopt, [](auto&&...) {}).status().code(),
            absl::StatusCode::kAlreadyExists);
  v1::AbortRequest abort;
  abort.set_request_id("client-7");
  ASSERT_TRUE(w.handler->Abort(abort).ok());
  EXPECT_EQ(outcome.get_future().get().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(w.handler->Abort(abort).code(), absl::StatusCode::kNotFound);
  const auto id =
      w.handler->StartGenerate(Request(testing::Ids(40, 3), 3000), std::nullopt, [](auto&&...) {});
  ASSERT_TRUE(id.ok());
  w.handler->Cancel(*id);
  for (int i = 0; i < 200 && !w.handler->Idle(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_TRUE(w.handler->Idle());
  EXPECT_EQ(w.handler->Load().dense().used_pages(), 0);
  EXPECT_EQ(w.handler->Load().streaming().used_pages(), 0);
}

// Delivers KV from one in-process worker to another through the wire format.
class LoopbackTransport : public KvTransport {
 public:
  explicit LoopbackTransport(WorkerHandler** target) : target_(target) {}
  std::string_view name() const override { return "loopback"; }
  absl::StatusOr<KvPushResult> Push(const std::string&, uint64_t reservation, KvSource& source,
                                    std::chrono::steady_clock::time_point) override {
    absl::StatusOr<KvSnapshot> read = source.ReadSnapshot();
    if (!read.ok()) return read.status();
    const KvSnapshot& snapshot = *read;
    std::unique_ptr<KvReceiver> receiver = (*target_)->NewKvReceiver();
    if (absl::Status s = receiver->OnHeader(KvHeaderFor(snapshot, reservation)); !s.ok()) return s;
    absl::Status s = ForEachKvChunk(snapshot, 1000,
                                    [&](std::string_view data) { return receiver->OnData(data); });
    if (!s.ok()) return s;
    absl::StatusOr<v1::PushKvResponse> response = (*target_)->FinishPush(*receiver);
    if (!response.ok()) return response.status();
    return KvPushResult{response->bytes(), "loopback"};
  }

 private:
  WorkerHandler** target_;
};

TEST(WorkerHandlerTest, HandOffThroughTheWireGivesTheUnifiedWorkersTokens) {
  WorkerHandler* decode_handler = nullptr;
  LoopbackTransport transport(&decode_handler);
  Worker prefill(v1::WORKER_ROLE_PREFILL, &transport);
  Worker decode(v1::WORKER_ROLE_DECODE);
  decode_handler = decode.handler.get();
  Worker unified(v1::WORKER_ROLE_UNIFIED);
  const v1::GenerateRequest request = Request(testing::Ids(75, 4), 20);
  const Collected expected = Stream([&](ResponseSink sink) {
    return unified.handler->StartGenerate(request, std::nullopt, std::move(sink));
  });

  v1::ReserveKvRequest reserve;
  reserve.set_prompt_tokens(75);
  reserve.set_max_tokens(20);
  auto reservation = decode.handler->ReserveKv(reserve);
  ASSERT_TRUE(reservation.ok()) << reservation.status();
  std::promise<absl::StatusOr<v1::PrefillResponse>> prefilled;
  v1::PrefillRequest prefill_request;
  *prefill_request.mutable_request() = request;
  ASSERT_TRUE(prefill.handler
                  ->StartPrefill(prefill_request, std::nullopt,
                                 [&](absl::StatusOr<v1::PrefillResponse> r) {
                                   prefilled.set_value(std::move(r));
                                 })
                  .ok());
  absl::StatusOr<v1::PrefillResponse> first = prefilled.get_future().get();
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_GT(first->kv_bytes(), 0);
  v1::TransferKvRequest transfer;
  transfer.set_kv_handle(first->kv_handle());
  transfer.set_reservation_id(reservation->reservation_id());
  auto moved = prefill.handler->TransferKv(transfer, SteadyClock::now() + std::chrono::seconds(30));
  ASSERT_TRUE(moved.ok()) << moved.status();
  v1::ReleaseKvRequest release;
  release.set_kv_handle(first->kv_handle());
  ASSERT_TRUE(prefill.handler->ReleaseKv(release).ok());
  EXPECT_EQ(prefill.handler->ReleaseKv(release).code(), absl::StatusCode::kNotFound);

  v1::DecodeRequest decode_request;
  decode_request.set_reservation_id(reservation->reservation_id());
  *decode_request.mutable_request() = request;
  *decode_request.mutable_first_token() = first->first_token();
  const Collected rest = Stream([&](ResponseSink sink) {
    return decode.handler->StartDecode(decode_request, std::nullopt, std::move(sink));
  });
  ASSERT_TRUE(rest.status.ok()) << rest.status;
  std::vector<int32_t> got = {first->first_token().token_id()};
  got.insert(got.end(), rest.tokens.begin(), rest.tokens.end());
  EXPECT_EQ(got, expected.tokens);
  EXPECT_TRUE(prefill.handler->Idle());
  EXPECT_TRUE(decode.handler->Idle());
  // Roles guard the hand-off API.
  EXPECT_EQ(prefill.handler->ReserveKv(reserve).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

// A call waiting for the engine thread when the loop stops gets UNAVAILABLE instead of
// waiting forever, and so does every call after it.
TEST(EngineLoopTest, CallsTheStoppedLoopWillNotRunAnswerUnavailable) {
  Worker w(v1::WORKER_ROLE_UNIFIED);
  auto ok = w.loop->Run<absl::StatusOr<int>>([]() -> absl::StatusOr<int> { return 7; });
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, 7);
  // The engine thread runs `first` (the posted calls are taken together, so `second`,
  // posted meanwhile, waits for the next step) until the loop has been told to stop.
  std::promise<void> entered, release;
  std::shared_future<void> released = release.get_future().share();
  auto first = std::async(std::launch::async, [&] {
    return w.loop->Run<absl::Status>([&] {
      entered.set_value();
      released.wait();
      return absl::OkStatus();
    });
  });
  entered.get_future().wait();
  auto second = std::async(std::launch::async, [&] {
    return w.loop->Run<absl::Status>([] { return absl::OkStatus(); });
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // `second` is posted
  auto stopping = std::async(std::launch::async, [&] { w.loop->Stop(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the loop is told to stop
  release.set_value();
  ASSERT_EQ(first.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_TRUE(first.get().ok());
  ASSERT_EQ(second.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(second.get().code(), absl::StatusCode::kUnavailable);
  ASSERT_EQ(stopping.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(w.loop->Run<absl::Status>([] { return absl::OkStatus(); }).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_TRUE(w.handler->Idle());
}

TEST(KvWireTest, TruncatedCorruptedOrOversizedStreamsAreRefused) {
  KvSnapshot snapshot;
  snapshot.length = 3;
  snapshot.num_dense_pages = 1;
  snapshot.dense_bytes.assign(1000, 7);
  snapshot.streaming_bytes.assign(333, 9);
  const v1::KvHeader header = KvHeaderFor(snapshot, 5);
  auto feed = [&](KvReceiver& receiver, size_t drop, int flip) -> absl::StatusOr<KvSnapshot> {
    if (absl::Status s = receiver.OnHeader(header); !s.ok()) return s;
    std::string bytes(snapshot.dense_bytes.begin(), snapshot.dense_bytes.end());
    bytes.append(snapshot.streaming_bytes.begin(), snapshot.streaming_bytes.end());
    bytes.resize(bytes.size() - drop);
    if (flip >= 0) bytes[flip] ^= 1;
    for (size_t i = 0; i < bytes.size(); i += 97) {
      if (absl::Status s = receiver.OnData(std::string_view(bytes).substr(i, 97)); !s.ok())
        return s;
    }
    return receiver.Finish();
  };
  KvReceiver whole(1 << 20);
  absl::StatusOr<KvSnapshot> back = feed(whole, 0, -1);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->dense_bytes, snapshot.dense_bytes);
  EXPECT_EQ(back->streaming_bytes, snapshot.streaming_bytes);
  KvReceiver cut(1 << 20);
  EXPECT_EQ(feed(cut, 10, -1).status().code(), absl::StatusCode::kDataLoss);
  KvReceiver corrupt(1 << 20);
  EXPECT_EQ(feed(corrupt, 0, 1200).status().code(), absl::StatusCode::kDataLoss);
  KvReceiver small(100);
  EXPECT_EQ(small.OnHeader(header).code(), absl::StatusCode::kInvalidArgument);
  KvReceiver headless(1 << 20);
  EXPECT_EQ(headless.OnData("x").code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lserve
