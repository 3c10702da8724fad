// The scheduler's side of the disaggregated hand-off: reservations on the decode worker,
// leased KV on the prefill worker, and work posted to the engine thread.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "worker/scheduler/kv_stream_out.h"
#include "worker/scheduler/scheduler.h"
#include "worker/scheduler/scheduler_state.h"

namespace lserve {

void Scheduler::Post(std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  posted_fns_.push_back(std::move(fn));
  ++posted_;
}

void Scheduler::RunPosted() {
  std::vector<std::function<void()>> fns;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fns.swap(posted_fns_);
  }
  for (auto& fn : fns) {
    fn();
    --posted_;
  }
}

void Scheduler::DropPosted() {
  std::vector<std::function<void()>> fns;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fns.swap(posted_fns_);
    posted_ -= static_cast<int64_t>(fns.size());
  }
  // Destroyed outside the lock: a destructor may post or wake a waiter.
}

PageCounts Scheduler::ReservedPages() const {
  PageCounts total;
  for (const auto& [id, reservation] : reservations_) {
    total.dense += reservation.pages.dense;
    total.streaming += reservation.pages.streaming;
  }
  return total;
}

PageCounts Scheduler::AvailableNow() const {
  PageCounts available = capacity_->Available();
  const PageCounts reserved = ReservedPages();
  available.dense -= reserved.dense;
  available.streaming -= reserved.streaming;
  return available;
}

void Scheduler::ExpireLeases(SteadyClock::time_point now) {
  for (auto it = leased_.begin(); it != leased_.end();) {
    if (it->second.expiry > now || it->second.exports > 0) {
      ++it;
      continue;
    }
    LOG(Warning) << "KV lease " << it->first << " expired unacknowledged; freeing its pages";
    CHECK(engine_->FreeSequence(it->first).ok());
    it = leased_.erase(it);
  }
  for (auto it = reservations_.begin(); it != reservations_.end();) {
    if (it->second.expiry > now || it->second.receiving) {
      ++it;
      continue;
    }
    LOG(Warning) << "KV reservation " << it->first << " expired unused";
    if (it->second.filled) CHECK(engine_->FreeSequence(it->first).ok());
    it = reservations_.erase(it);
  }
}

absl::StatusOr<RequestId> Scheduler::Reserve(int64_t prompt_tokens, int max_tokens,
                                             std::chrono::milliseconds lease) {
  if (draining_) return absl::UnavailableError("the worker is draining: no new requests");
  const ModelConfig& config = engine_->config();
  if (prompt_tokens <= 0 || max_tokens <= 0 ||
      prompt_tokens + max_tokens > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(
        "reservation of ", prompt_tokens, " prompt and ", max_tokens,
        " generated tokens does not fit the context length ", config.max_position_embeddings));
  }
  const PageCounts pages = capacity_->MaxPagesFor(prompt_tokens + max_tokens);
  if (!Fits(pages, AvailableNow())) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "no room to reserve ", pages.dense, " dense and ", pages.streaming, " streaming pages"));
  }
  RequestId id;
  {
    std::lock_guard<std::mutex> lock(mu_);
    id = next_id_++;
  }
  Reservation& reservation = reservations_[id];
  reservation.pages = pages;
  reservation.prompt_tokens = prompt_tokens;
  reservation.max_tokens = max_tokens;
  reservation.expiry = SteadyClock::now() + lease;
  return id;
}

absl::Status Scheduler::ImportIntoReservation(
    RequestId id, int64_t length, const std::function<absl::StatusOr<PageCounts>()>& import) {
  auto it = reservations_.find(id);
  if (it == reservations_.end()) {
    return absl::NotFoundError(absl::StrCat("no KV reservation ", id, " (expired or unknown)"));
  }
  Reservation& reservation = it->second;
  if (reservation.filled) return absl::AlreadyExistsError("the reservation is already filled");
  if (length != reservation.prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the KV holds ", length, " tokens, the reservation is for ", reservation.prompt_tokens));
  }
  // The reservation's pages stand aside while the import takes real ones.
  const PageCounts held = reservation.pages;
  reservation.pages = {};
  absl::StatusOr<PageCounts> imported = import();
  if (!imported.ok()) {
    reservation.pages = held;
    return imported.status();
  }
  reservation.pages = {std::max<int64_t>(0, held.dense - imported->dense),
                       std::max<int64_t>(0, held.streaming - imported->streaming)};
  reservation.filled = true;
  return absl::OkStatus();
}

absl::Status Scheduler::FillReservation(RequestId id, const KvSnapshot& snapshot) {
  return ImportIntoReservation(id, snapshot.length, [&]() -> absl::StatusOr<PageCounts> {
    if (absl::Status status = engine_->SwapIn(id, snapshot); !status.ok()) return status;
    return PageCounts{snapshot.num_dense_pages,
                      static_cast<int64_t>(snapshot.streaming_indices.size())};
  });
}

absl::StatusOr<KvPlacement> Scheduler::ClaimReservation(RequestId id, const KvSnapshot& manifest) {
  KvPlacement placement;
  absl::Status status =
      ImportIntoReservation(id, manifest.length, [&]() -> absl::StatusOr<PageCounts> {
        absl::StatusOr<KvPlacement> claimed = engine_->ImportPages(id, manifest);
        if (!claimed.ok()) return claimed.status();
        placement = *std::move(claimed);
        return PageCounts{static_cast<int64_t>(placement.dense.size()),
                          static_cast<int64_t>(placement.streaming.size())};
      });
  if (!status.ok()) return status;
  reservations_[id].receiving = true;
  return placement;
}

absl::Status Scheduler::EndReceive(RequestId id, bool received) {
  auto it = reservations_.find(id);
  if (it == reservations_.end() || !it->second.receiving) {
    return absl::FailedPreconditionError(absl::StrCat("KV reservation ", id, " is not receiving"));
  }
  Reservation& reservation = it->second;
  reservation.receiving = false;
  if (received && !reservation.cancel_pending) return absl::OkStatus();
  // The pages go back; a failed receive leaves the reservation to be filled again.
  CHECK(engine_->FreeSequence(id).ok());
  reservation.filled = false;
  reservation.pages = capacity_->MaxPagesFor(reservation.prompt_tokens + reservation.max_tokens);
  if (reservation.cancel_pending) reservations_.erase(it);
  return received ? absl::CancelledError(absl::StrCat("KV reservation ", id, " was cancelled"))
                  : absl::OkStatus();
}

absl::Status Scheduler::CancelReservation(RequestId id) {
  auto it = reservations_.find(id);
  if (it == reservations_.end()) return absl::NotFoundError(absl::StrCat("no reservation ", id));
  if (it->second.receiving) {
    it->second.cancel_pending = true;  // the transport still writes its pages
    return absl::OkStatus();
  }
  if (it->second.filled) CHECK(engine_->FreeSequence(id).ok());
  reservations_.erase(it);
  return absl::OkStatus();
}

absl::Status Scheduler::SubmitReserved(RequestId id, GenerationRequest request,
                                       const GeneratedToken& first) {
  auto it = reservations_.find(id);
  if (it == reservations_.end() || !it->second.filled || it->second.receiving) {
    return absl::FailedPreconditionError(
        absl::StrCat("KV reservation ", id, " is unknown, expired or not filled yet"));
  }
  if (absl::Status status = ValidateRequest(request); !status.ok()) return status;
  if (static_cast<int64_t>(request.prompt.size()) != it->second.prompt_tokens ||
      request.sampling.max_tokens > it->second.max_tokens) {
    return absl::InvalidArgumentError("the request does not match its KV reservation");
  }
  const ModelConfig& config = engine_->config();
  if (first.id < 0 || first.id >= config.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("first token ", first.id, " is not in the vocabulary"));
  }
  reservations_.erase(it);
  auto state = std::make_unique<State>();
  state->id = id;
  state->arrival = SteadyClock::now();
  state->first_scheduled = state->arrival;
  state->order = order_++;
  state->context = request.prompt;
  state->context.push_back(first.id);
  state->computed = static_cast<int64_t>(request.prompt.size());
  state->generated = 1;
  state->timings.prompt_tokens = static_cast<int64_t>(request.prompt.size());
  state->request = std::move(request);
  state->where = State::Where::kRunning;
  State* raw = state.get();
  {
    std::lock_guard<std::mutex> lock(mu_);
    live_ids_[id] = true;
  }
  ++live_;
  states_.emplace(id, std::move(state));
  running_.push_back(raw);
  // The prefill side sampled the first token; it may already end the request.
  const auto& stops = raw->request.sampling.stop_token_ids;
  if (std::find(stops.begin(), stops.end(), first.id) != stops.end()) {
    Finish(*raw, FinishReason::kStop, absl::OkStatus());
  } else if (raw->request.sampling.max_tokens <= 1) {
    Finish(*raw, FinishReason::kLength, absl::OkStatus());
  }
  return absl::OkStatus();
}

absl::StatusOr<KvSnapshot> Scheduler::ExportLeased(RequestId handle) const {
  auto it = leased_.find(handle);
  if (it == leased_.end() || it->second.release_pending) {
    return absl::NotFoundError(absl::StrCat("no leased KV ", handle, " (released or expired)"));
  }
  return engine_->kv_store().ExportSequence(handle);
}

absl::StatusOr<KvPageExport> Scheduler::BeginLeasedExport(RequestId handle) {
  auto it = leased_.find(handle);
  if (it == leased_.end() || it->second.release_pending) {
    return absl::NotFoundError(absl::StrCat("no leased KV ", handle, " (released or expired)"));
  }
  absl::StatusOr<KvPageExport> exported = engine_->kv_store().ExportPages(handle);
  if (exported.ok()) ++it->second.exports;
  return exported;
}

void Scheduler::StartStreams(const std::vector<Planned>& plan, std::shared_ptr<QueueMarks> marks) {
  for (const Planned& planned : plan) {
    State& state = *planned.state;
    if (!planned.StreamsKv()) continue;
    const int64_t tokens = static_cast<int64_t>(planned.input.tokens.size());
    absl::StatusOr<KvPageExport> pages = engine_->kv_store().ExportPages(state.id, tokens);
    if (!pages.ok()) {
      LOG(Warning) << "request " << state.id << ": its KV cannot stream out: " << pages.status();
      continue;
    }
    ++stream_pins_[state.id];
    // Started once: the request finishes with this step.
    std::shared_ptr<KvStreamOut> stream = std::move(state.request.stream_kv);
    stream->Start(state.id, *std::move(pages), marks);
  }
}

void Scheduler::EndLeasedExport(RequestId handle) {
  if (auto pinned = stream_pins_.find(handle); pinned != stream_pins_.end()) {
    if (--pinned->second == 0) stream_pins_.erase(pinned);
    return;
  }
  auto it = leased_.find(handle);
  if (it == leased_.end() || it->second.exports == 0) return;
  if (--it->second.exports == 0 && it->second.release_pending) {
    CHECK(engine_->FreeSequence(handle).ok());
    leased_.erase(it);
  }
}

absl::Status Scheduler::ReleaseLeased(RequestId handle) {
  auto it = leased_.find(handle);
  if (it == leased_.end() || it->second.release_pending) {
    return absl::NotFoundError(absl::StrCat("no leased KV ", handle, " (released or expired)"));
  }
  if (it->second.exports > 0) {
    it->second.release_pending = true;  // freed when the last transfer ends
    return absl::OkStatus();
  }
  CHECK(engine_->FreeSequence(handle).ok());
  leased_.erase(it);
  return absl::OkStatus();
}

}  // namespace lserve
