// The handler's side of the disaggregated hand-off (DESIGN.md §1): the prefill worker
// computes a prompt and keeps its KV under a lease; the decode worker reserves pages,
// receives the KV and continues from the first token.
#include <utility>

#include "absl/strings/str_cat.h"
#include "worker/service/worker_handler.h"

namespace lserve {

absl::Status WorkerHandler::CheckRole(bool prefill_side) const {
  const v1::WorkerRole wrong = prefill_side ? v1::WORKER_ROLE_DECODE : v1::WORKER_ROLE_PREFILL;
  if (identity_.role != wrong) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("this is a ", prefill_side ? "decode" : "prefill", " worker: it does not ",
                   prefill_side ? "prefill for a hand-off" : "take handed-off KV"));
}

absl::StatusOr<v1::ReserveKvResponse> WorkerHandler::ReserveKv(const v1::ReserveKvRequest& r) {
  if (absl::Status status = CheckRole(false); !status.ok()) return status;
  const auto lease =
      r.lease_ms() > 0 ? std::chrono::milliseconds(r.lease_ms()) : identity_.kv_lease;
  if (identity_.max_context > 0 && r.prompt_tokens() + r.max_tokens() > identity_.max_context) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt (", r.prompt_tokens(), " tokens) + max_tokens (", r.max_tokens(),
                     ") exceeds the context length ", identity_.max_context));
  }
  absl::StatusOr<RequestId> id = loop_->Run<absl::StatusOr<RequestId>>(
      [&] { return loop_->scheduler().Reserve(r.prompt_tokens(), r.max_tokens(), lease); });
  if (!id.ok()) return id.status();
  v1::ReserveKvResponse response;
  response.set_reservation_id(static_cast<uint64_t>(*id));
  return response;
}

absl::StatusOr<RequestId> WorkerHandler::StartPrefill(
    const v1::PrefillRequest& r, std::optional<SteadyClock::time_point> deadline,
    std::function<void(absl::StatusOr<v1::PrefillResponse>)> done) {
  if (absl::Status status = CheckRole(true); !status.ok()) return status;
  absl::StatusOr<GenerationRequest> request = ToRequest(r.request(), deadline);
  if (!request.ok()) return request.status();
  request->keep_kv = true;
  request->sampling.max_tokens = 1;  // the first token; the decode side samples the rest
  request->kv_lease =
      r.lease_ms() > 0 ? std::chrono::milliseconds(r.lease_ms()) : identity_.kv_lease;
  const bool logprobs = request->sampling.logprobs >= 0;
  const Engine& engine = loop_->engine();
  auto first = std::make_shared<v1::GeneratedToken>();
  auto sink = [this, &engine, logprobs, first, done = std::move(done)](const RequestEvent& event) {
    for (const GeneratedToken& token : event.tokens) *first = ToProtoToken(token, logprobs);
    if (!event.finished) return;
    if (metrics_ != nullptr)
      metrics_->RequestFinished(event.status, event.finish_reason, event.timings);
    if (!event.status.ok()) {
      done(event.status);
      return;
    }
    v1::PrefillResponse response;
    response.set_kv_handle(static_cast<uint64_t>(event.id));
    *response.mutable_first_token() = *first;
    response.set_kv_tokens(event.timings.prompt_tokens);
    // The sink runs on the engine thread, which owns the page tables.
    const KvStore& kv = engine.kv_store();
    response.set_kv_bytes(static_cast<int64_t>(
        kv.tables().DensePages(event.id).size() * kv.dense_pool().PageBytesAllLayers() +
        kv.tables().StreamingPagesHeld(event.id) * kv.streaming_pool().PageBytesAllLayers()));
    *response.mutable_timings() = ToProtoTimings(event.timings);
    done(std::move(response));
  };
  absl::StatusOr<RequestId> id = loop_->Submit(*std::move(request), std::move(sink));
  if (!id.ok() && id.status().code() == absl::StatusCode::kOutOfRange) {
    return absl::InvalidArgumentError(id.status().message());
  }
  return id;
}

std::unique_ptr<KvReceiver> WorkerHandler::NewKvReceiver() const {
  return std::make_unique<KvReceiver>(identity_.max_kv_bytes);
}

absl::StatusOr<v1::PushKvResponse> WorkerHandler::FinishPush(KvReceiver& receiver) {
  if (absl::Status status = CheckRole(false); !status.ok()) return status;
  const SteadyClock::time_point start = SteadyClock::now();
  absl::StatusOr<KvSnapshot> snapshot = receiver.Finish();
  if (!snapshot.ok()) return snapshot.status();
  const RequestId reservation = static_cast<RequestId>(receiver.reservation_id());
  absl::Status status = loop_->Run<absl::Status>(
      [&] { return loop_->scheduler().FillReservation(reservation, *snapshot); });
  if (!status.ok()) return status;
  if (metrics_ != nullptr) {
    metrics_->KvHandoff("in", "grpc", receiver.received(),
                        std::chrono::duration<double>(SteadyClock::now() - start).count());
  }
  v1::PushKvResponse response;
  response.set_bytes(receiver.received());
  return response;
}

absl::StatusOr<v1::TransferKvResponse> WorkerHandler::TransferKv(const v1::TransferKvRequest& r,
                                                                 SteadyClock::time_point deadline) {
  if (absl::Status status = CheckRole(true); !status.ok()) return status;
  if (transport_ == nullptr) return absl::FailedPreconditionError("no KV transport configured");
  const RequestId handle = static_cast<RequestId>(r.kv_handle());
  const SteadyClock::time_point start = SteadyClock::now();
  absl::StatusOr<KvSnapshot> snapshot = loop_->Run<absl::StatusOr<KvSnapshot>>(
      [&] { return loop_->scheduler().ExportLeased(handle); });
  if (!snapshot.ok()) return snapshot.status();
  absl::StatusOr<int64_t> bytes =
      transport_->Push(r.target(), r.reservation_id(), *snapshot, deadline);
  if (!bytes.ok()) return bytes.status();
  const double seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
  if (metrics_ != nullptr) metrics_->KvHandoff("out", transport_->name(), *bytes, seconds);
  v1::TransferKvResponse response;
  response.set_bytes(*bytes);
  response.set_seconds(seconds);
  return response;
}

absl::Status WorkerHandler::ReleaseKv(const v1::ReleaseKvRequest& r) {
  if (r.reservation_id() != 0) {
    const RequestId reservation = static_cast<RequestId>(r.reservation_id());
    return loop_->Run<absl::Status>(
        [&] { return loop_->scheduler().CancelReservation(reservation); });
  }
  const RequestId handle = static_cast<RequestId>(r.kv_handle());
  return loop_->Run<absl::Status>([&] { return loop_->scheduler().ReleaseLeased(handle); });
}

absl::StatusOr<RequestId> WorkerHandler::StartDecode(
    const v1::DecodeRequest& r, std::optional<SteadyClock::time_point> deadline,
    ResponseSink sink) {
  if (absl::Status status = CheckRole(false); !status.ok()) return status;
  absl::StatusOr<GenerationRequest> request = ToRequest(r.request(), deadline);
  if (!request.ok()) return request.status();
  GeneratedToken first;
  first.id = r.first_token().token_id();
  const RequestId reservation = static_cast<RequestId>(r.reservation_id());
  const bool logprobs = request->sampling.logprobs >= 0;
  absl::Status status = loop_->RunWithSink(
      [&]() -> absl::StatusOr<RequestId> {
        absl::Status submitted =
            loop_->scheduler().SubmitReserved(reservation, *std::move(request), first);
        if (!submitted.ok()) return submitted;
        return reservation;
      },
      StreamSink(r.request().request_id(), logprobs, std::move(sink)));
  if (!status.ok()) return status;
  return reservation;
}

}  // namespace lserve
