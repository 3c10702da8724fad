// The router's attempts (DESIGN.md §1): a unified stream from one worker, or the
// disaggregated hand-off — reserve on the decode worker D, prefill on P, move P's KV into
// D's reservation (once more to another D when that fails), release P's lease, decode on
// D. Every reservation and lease is released on every path; leases also expire on the
// workers when the router itself dies.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "router/router_handler.h"
#include "router/router_run.h"

namespace lserve {
namespace {

// Releases best-effort: a worker that cannot be reached drops the lease when it expires.
constexpr std::chrono::seconds kReleaseTimeout{2};
// Quick control calls (reservations) get this long at most.
constexpr std::chrono::seconds kControlTimeout{10};

Deadline ControlDeadline(Deadline request_deadline) {
  return std::min(request_deadline, std::chrono::system_clock::now() + kControlTimeout);
}

void Release(WorkerState& worker, uint64_t kv_handle, uint64_t reservation_id) {
  v1::ReleaseKvRequest request;
  request.set_kv_handle(kv_handle);
  request.set_reservation_id(reservation_id);
  absl::Status status =
      worker.client->ReleaseKv(request, std::chrono::system_clock::now() + kReleaseTimeout);
  if (!status.ok() && status.code() != absl::StatusCode::kNotFound) {
    LOG(Warning) << "could not release KV on " << worker.address << ": " << status
                 << "; its lease will expire";
  }
}

// Counts the router's requests on a worker while an attempt runs.
class InFlight {
 public:
  explicit InFlight(WorkerState& worker) : worker_(worker) { ++worker_.in_flight; }
  ~InFlight() { --worker_.in_flight; }

 private:
  WorkerState& worker_;
};

bool Stops(const v1::GenerateRequest& request, int32_t token) {
  const auto& stops = request.sampling().stop_token_ids();
  return std::find(stops.begin(), stops.end(), token) != stops.end();
}

}  // namespace

void RouterHandler::Failed(Run& run, WorkerState& worker, const absl::Status& status) {
  if (status.ok() || IsRequestError(status) || run.cancel->cancelled()) return;
  // The request's own deadline passing is not the worker's fault.
  if (absl::IsDeadlineExceeded(status) && std::chrono::system_clock::now() >= run.deadline) return;
  run.exclude.push_back(worker.address);
  // A full worker is healthy: it is only skipped for this request.
  if (status.code() != absl::StatusCode::kResourceExhausted) registry_->ReportFailure(worker);
}

absl::Status RouterHandler::Unified(Run& run, WorkerState& worker) {
  InFlight counted(worker);
  AttemptCancellation attempt(run, worker);
  const absl::Status status = attempt.Explain(worker.client->Generate(
      run.Current(), run.deadline,
      [&](const v1::GenerateResponse& response) { Emit(run, response); }, attempt.get()));
  if (status.ok()) {
    registry_->ReportSuccess(worker);
  } else {
    Failed(run, worker, status);
  }
  return status;
}

absl::Status RouterHandler::Disaggregated(Run& run, WorkerState& decode, WorkerState& prefill) {
  // D's pages are reserved first, so the prefill is not wasted for lack of room.
  absl::StatusOr<uint64_t> reservation = Reserve(run, decode);
  if (!reservation.ok()) return reservation.status();
  InFlight counted_prefill(prefill);
  const v1::GenerateRequest request = run.Current();
  v1::PrefillRequest prefill_request;
  *prefill_request.mutable_request() = request;
  prefill_request.set_lease_ms(options_.kv_lease.count());
  // A worker with a device transport sends the KV to D while its last chunk computes.
  if (request.sampling().max_tokens() > 1) {
    prefill_request.set_handoff_target(decode.address);
    prefill_request.set_handoff_reservation_id(*reservation);
  }
  absl::StatusOr<v1::PrefillResponse> prefilled = absl::UnknownError("");
  {
    AttemptCancellation attempt(run, prefill);
    prefilled = prefill.client->Prefill(prefill_request, run.deadline, attempt.get());
    if (!prefilled.ok()) prefilled = attempt.Explain(prefilled.status());
  }
  if (!prefilled.ok()) {
    Release(decode, 0, *reservation);
    Failed(run, prefill, prefilled.status());
    return prefilled.status();
  }
  registry_->ReportSuccess(prefill);
  run.prefill_timings = prefilled->timings();
  run.handed_off = true;
  // The first token goes to the client now; the hand-off follows.
  v1::GenerateResponse first;
  *first.add_tokens() = prefilled->first_token();
  Emit(run, first);
  const int32_t first_id = prefilled->first_token().token_id();
  if (request.sampling().max_tokens() <= 1 || Stops(request, first_id)) {
    Release(prefill, prefilled->kv_handle(), 0);
    Release(decode, 0, *reservation);
    run.finished = true;
    run.reason = Stops(request, first_id) ? v1::FINISH_REASON_STOP : v1::FINISH_REASON_LENGTH;
    run.worker_timings = prefilled->timings();
    return absl::OkStatus();
  }
  absl::Status moved = Transfer(run, decode, *reservation, prefill, *prefilled);
  WorkerState* target = &decode;
  std::shared_ptr<WorkerState> second;
  // A cut transfer is retried once into another decode worker while P keeps its lease.
  const bool prefill_failed =
      std::find(run.exclude.begin(), run.exclude.end(), prefill.address) != run.exclude.end();
  if (!moved.ok() && !prefill_failed && !IsRequestError(moved) && !run.cancel->cancelled()) {
    second = Pick(run, Pool::kDecode, prefill.address);
    if (second != nullptr) {
      if (metrics_ != nullptr) metrics_->Retry("handoff");
      target = second.get();
      reservation = Reserve(run, *second);
      moved = reservation.ok() ? Transfer(run, *second, *reservation, prefill, *prefilled)
                               : reservation.status();
    }
  }
  Release(prefill, prefilled->kv_handle(), 0);
  // Without a hand-off, the next attempt resumes from the prompt and the first token.
  if (!moved.ok()) return moved;
  return Decode(run, *target, *reservation, prefilled->first_token());
}

absl::StatusOr<uint64_t> RouterHandler::Reserve(Run& run, WorkerState& decode) {
  v1::ReserveKvRequest reserve;
  reserve.set_prompt_tokens(run.original.prompt_token_ids_size());
  reserve.set_max_tokens(run.original.sampling().max_tokens());
  reserve.set_lease_ms(options_.kv_lease.count());
  absl::StatusOr<v1::ReserveKvResponse> reserved =
      decode.client->ReserveKv(reserve, ControlDeadline(run.deadline));
  if (!reserved.ok()) {
    Failed(run, decode, reserved.status());
    return reserved.status();
  }
  return reserved->reservation_id();
}

absl::Status RouterHandler::Transfer(Run& run, WorkerState& decode, uint64_t reservation,
                                     WorkerState& prefill, const v1::PrefillResponse& prefilled) {
  v1::TransferKvRequest transfer;
  transfer.set_kv_handle(prefilled.kv_handle());
  transfer.set_target(decode.address);
  transfer.set_reservation_id(reservation);
  absl::StatusOr<v1::TransferKvResponse> moved = absl::UnknownError("");
  {
    AttemptCancellation attempt(run, prefill);
    moved = prefill.client->TransferKv(transfer, run.deadline, attempt.get());
    if (!moved.ok()) moved = attempt.Explain(moved.status());
  }
  if (!moved.ok()) {
    Release(decode, 0, reservation);
    LOG(Warning) << "KV hand-off " << prefill.address << " -> " << decode.address
                 << " failed: " << moved.status();
    if (IsRequestError(moved.status()) || run.cancel->cancelled()) return moved.status();
    // Either side may have cut the stream: a prefill worker that no longer answers is to
    // blame (and the hand-off is not retried); otherwise this request avoids D.
    absl::StatusOr<bool> alive =
        prefill.client->Healthy(std::chrono::system_clock::now() + kReleaseTimeout);
    if (!alive.ok() || !*alive) {
      Failed(run, prefill, moved.status());
      return moved.status();
    }
    run.exclude.push_back(decode.address);
    return moved.status();
  }
  if (metrics_ != nullptr) metrics_->Handoff(moved->bytes(), moved->seconds());
  return absl::OkStatus();
}

absl::Status RouterHandler::Decode(Run& run, WorkerState& decode, uint64_t reservation,
                                   const v1::GeneratedToken& first) {
  InFlight counted(decode);
  v1::DecodeRequest request;
  request.set_reservation_id(reservation);
  *request.mutable_request() = run.original;
  *request.mutable_first_token() = first;
  const size_t emitted_before = run.emitted.size();
  absl::Status status;
  {
    AttemptCancellation attempt(run, decode);
    status = attempt.Explain(decode.client->Decode(
        request, run.deadline, [&](const v1::GenerateResponse& response) { Emit(run, response); },
        attempt.get()));
  }
  if (status.ok()) {
    registry_->ReportSuccess(decode);
    return status;
  }
  // A stream that never started leaves the filled reservation behind.
  if (run.emitted.size() == emitted_before) Release(decode, 0, reservation);
  Failed(run, decode, status);
  return status;
}

}  // namespace lserve
