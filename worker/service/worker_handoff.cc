// The handler's side of the disaggregated hand-off (DESIGN.md §1): the prefill worker
// computes a prompt and keeps its KV under a lease; the decode worker reserves pages,
// receives the KV and continues from the first token.
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "worker/service/worker_handler.h"

namespace lserve {
namespace {

// A leased handle's KV, read on the engine thread; pinned pages are unpinned (and freed,
// when released meanwhile) with the source.
class LeasedKvSource final : public KvSource {
 public:
  LeasedKvSource(EngineLoop* loop, RequestId handle) : loop_(loop), handle_(handle) {}
  ~LeasedKvSource() override {
    if (!pinned_) return;
    (void)loop_->Run<absl::Status>([&] {
      loop_->scheduler().EndLeasedExport(handle_);
      return absl::OkStatus();
    });
  }
  absl::StatusOr<KvSnapshot> ReadSnapshot() override {
    return loop_->Run<absl::StatusOr<KvSnapshot>>(
        [&] { return loop_->scheduler().ExportLeased(handle_); });
  }
  absl::StatusOr<KvPageExport> PinPages() override {
    if (pinned_) return absl::FailedPreconditionError("the KV's pages are already pinned");
    absl::StatusOr<KvPageExport> pages = loop_->Run<absl::StatusOr<KvPageExport>>(
        [&] { return loop_->scheduler().BeginLeasedExport(handle_); });
    pinned_ = pages.ok();
    return pages;
  }
  const KvPool& dense_pool() const override { return loop_->engine().kv_store().dense_pool(); }
  const KvPool& streaming_pool() const override {
    return loop_->engine().kv_store().streaming_pool();
  }

 private:
  EngineLoop* loop_;
  RequestId handle_;
  bool pinned_ = false;
};

constexpr int64_t kMaxReceiveTimeoutMs = 600'000;
// A hand-off started during a prefill without a deadline gives up after this.
constexpr std::chrono::minutes kEarlyPushTimeout{10};

}  // namespace

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

namespace {

// How long before its call's deadline a prefill must finish to be answered with its handle.
constexpr auto kPrefillAnswerMargin = std::chrono::milliseconds(5);

}  // namespace

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
  std::shared_ptr<KvStreamOut> stream;
  if (early_pushes_ != nullptr && !r.handoff_target().empty() && r.handoff_reservation_id() != 0) {
    stream = early_pushes_->NewStream(r.handoff_target(), r.handoff_reservation_id(),
                                      deadline.value_or(SteadyClock::now() + kEarlyPushTimeout));
    request->stream_kv = stream;
  }
  const Engine& engine = loop_->engine();
  auto first = std::make_shared<v1::GeneratedToken>();
  auto sink = [this, &engine, logprobs, first, stream, deadline,
               done = std::move(done)](const RequestEvent& event) {
    for (const GeneratedToken& token : event.tokens) *first = ToProtoToken(token, logprobs);
    if (!event.finished) return;
    if (metrics_ != nullptr)
      metrics_->RequestFinished(event.status, event.finish_reason, event.timings);
    if (!event.status.ok()) {
      done(event.status);
      return;
    }
    // Finished this close to the call's deadline, the handle might reach a caller that has
    // given up, and nobody would release the KV before its lease expired: release it now
    // (after this event, once the lease is in place) and answer DEADLINE_EXCEEDED.
    if (deadline.has_value() && SteadyClock::now() + kPrefillAnswerMargin > *deadline) {
      const RequestId id = event.id;
      loop_->Post([this, id] { (void)loop_->scheduler().ReleaseLeased(id); });
      done(absl::DeadlineExceededError(
          "the prefill finished too close to the call's deadline to answer; its KV is released"));
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
    // TransferKv may come as soon as the response is out.
    if (stream != nullptr) early_pushes_->Register(event.id, stream);
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
  absl::StatusOr<KvPushResult> pushed = absl::UnknownError("not sent");
  // The KV may already be on its way, sent while the prefill computed it.
  std::optional<absl::StatusOr<KvPushResult>> early;
  if (early_pushes_ != nullptr) {
    early = early_pushes_->Collect(handle, r.target(), r.reservation_id(), deadline);
  }
  // A failed one is sent again (its receive failed too, which frees the reservation
  // for another), while the call's deadline allows.
  if (early.has_value() && metrics_ != nullptr) metrics_->KvHandoffDuringPrefill(early->ok());
  if (early.has_value() && (early->ok() || SteadyClock::now() >= deadline)) {
    pushed = *std::move(early);
  } else {
    LeasedKvSource source(loop_, handle);
    pushed = transport_->Push(r.target(), r.reservation_id(), source, deadline);
  }
  if (!pushed.ok()) return pushed.status();
  const double seconds = std::chrono::duration<double>(SteadyClock::now() - start).count();
  if (metrics_ != nullptr) metrics_->KvHandoff("out", pushed->transport, pushed->bytes, seconds);
  v1::TransferKvResponse response;
  response.set_bytes(pushed->bytes);
  response.set_seconds(seconds);
  response.set_transport(pushed->transport);
  return response;
}

absl::Status WorkerHandler::CheckLinks() const {
  if (absl::Status status = CheckRole(false); !status.ok()) return status;
  if (link_receiver_ == nullptr) {
    return absl::UnimplementedError("this worker has no device KV transport");
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::OpenKvLinkResponse> WorkerHandler::OpenKvLink(const v1::OpenKvLinkRequest& r,
                                                                 SteadyClock::time_point deadline) {
  if (absl::Status status = CheckLinks(); !status.ok()) return status;
  if (r.timeout_ms() > 0) {
    deadline = std::min(deadline, SteadyClock::now() + std::chrono::milliseconds(std::min<int64_t>(
                                                           r.timeout_ms(), kMaxReceiveTimeoutMs)));
  }
  absl::StatusOr<int64_t> bytes = link_receiver_->Open(r.link_id(), r.nccl_unique_id(), deadline);
  if (!bytes.ok()) return bytes.status();
  v1::OpenKvLinkResponse response;
  response.set_device_bytes(*bytes);
  return response;
}

absl::StatusOr<v1::PostKvReceiveResponse> WorkerHandler::PostKvReceive(
    const v1::PostKvReceiveRequest& r) {
  if (absl::Status status = CheckLinks(); !status.ok()) return status;
  absl::StatusOr<KvSnapshot> manifest = ManifestFromHeader(r.header());
  if (!manifest.ok()) return manifest.status();
  if (r.src_dense_pages_size() != manifest->num_dense_pages ||
      r.src_streaming_pages_size() != static_cast<int>(manifest->streaming_indices.size())) {
    return absl::InvalidArgumentError("the sender's page lists do not match the KV header");
  }
  const RequestId reservation = static_cast<RequestId>(r.header().reservation_id());
  const uint64_t key = r.header().reservation_id();
  auto pending = std::make_shared<PendingReceive>();
  pending->link_id = r.link_id();
  {
    std::lock_guard<std::mutex> lock(receives_mu_);
    auto [it, inserted] = receives_.emplace(key, pending);
    if (!inserted) {
      // A failed receive's outcome gives way to a new attempt; a live one does not.
      std::lock_guard<std::mutex> old(it->second->mu);
      if (!it->second->outcome.has_value() || it->second->outcome->ok()) {
        return absl::AlreadyExistsError(absl::StrCat("reservation ", key, " is already receiving"));
      }
      it->second = pending;
    }
  }
  auto forget = [this, key, pending] { ForgetReceive(key, pending); };
  absl::StatusOr<KvPlacement> placement = loop_->Run<absl::StatusOr<KvPlacement>>(
      [&] { return loop_->scheduler().ClaimReservation(reservation, *manifest); });
  if (!placement.ok()) {
    forget();
    // NOT_FOUND is kept for an unknown link: the sender then opens another.
    if (absl::IsNotFound(placement.status())) {
      return absl::FailedPreconditionError(placement.status().message());
    }
    return placement.status();
  }
  KvPlacement sender;
  sender.dense.assign(r.src_dense_pages().begin(), r.src_dense_pages().end());
  sender.streaming.assign(r.src_streaming_pages().begin(), r.src_streaming_pages().end());
  const KvStore& kv = loop_->engine().kv_store();
  std::vector<KvByteRange> ranges =
      KvTransferRanges(kv.dense_pool(), kv.streaming_pool(), *placement, sender);
  pending->bytes = TotalBytes(ranges);
  const int64_t timeout_ms =
      r.timeout_ms() > 0 ? std::min<int64_t>(r.timeout_ms(), kMaxReceiveTimeoutMs) : 60'000;
  const SteadyClock::time_point start = SteadyClock::now();
  auto done = [this, reservation, pending, start](absl::Status outcome) {
    absl::Status ended = loop_->Run<absl::Status>(
        [&] { return loop_->scheduler().EndReceive(reservation, outcome.ok()); });
    if (outcome.ok()) outcome = ended;
    if (outcome.ok() && metrics_ != nullptr) {
      metrics_->KvHandoff("in", "nccl", pending->bytes,
                          std::chrono::duration<double>(SteadyClock::now() - start).count());
    }
    if (!outcome.ok()) {
      LOG(Warning) << "KV receive into reservation " << reservation << " failed: " << outcome;
    }
    std::lock_guard<std::mutex> lock(pending->mu);
    pending->outcome = outcome;
    pending->done.notify_all();
  };
  absl::Status posted =
      link_receiver_->PostReceive(r.link_id(), std::move(ranges),
                                  start + std::chrono::milliseconds(timeout_ms), std::move(done));
  if (!posted.ok()) {
    (void)loop_->Run<absl::Status>(
        [&] { return loop_->scheduler().EndReceive(reservation, false); });
    forget();
    return posted;
  }
  v1::PostKvReceiveResponse response;
  response.mutable_dst_dense_pages()->Assign(placement->dense.begin(), placement->dense.end());
  response.mutable_dst_streaming_pages()->Assign(placement->streaming.begin(),
                                                 placement->streaming.end());
  return response;
}

absl::StatusOr<v1::PushKvResponse> WorkerHandler::FinishKvReceive(
    const v1::FinishKvReceiveRequest& r, SteadyClock::time_point deadline) {
  if (absl::Status status = CheckLinks(); !status.ok()) return status;
  std::shared_ptr<PendingReceive> pending;
  {
    std::lock_guard<std::mutex> lock(receives_mu_);
    auto it = receives_.find(r.reservation_id());
    if (it == receives_.end()) {
      return absl::NotFoundError(
          absl::StrCat("no KV receive into reservation ", r.reservation_id()));
    }
    pending = it->second;
  }
  absl::Status outcome;
  {
    std::unique_lock<std::mutex> lock(pending->mu);
    if (!pending->done.wait_until(lock, deadline, [&] { return pending->outcome.has_value(); })) {
      return absl::DeadlineExceededError("the KV receive is still running");
    }
    outcome = *pending->outcome;
  }
  ForgetReceive(r.reservation_id(), pending);
  if (!outcome.ok()) return outcome;
  v1::PushKvResponse response;
  response.set_bytes(pending->bytes);
  return response;
}

void WorkerHandler::ForgetReceive(uint64_t reservation,
                                  const std::shared_ptr<PendingReceive>& pending) {
  std::lock_guard<std::mutex> lock(receives_mu_);
  auto it = receives_.find(reservation);
  if (it != receives_.end() && it->second == pending) receives_.erase(it);
}

absl::Status WorkerHandler::CloseKvLink(const v1::CloseKvLinkRequest& r) {
  if (absl::Status status = CheckLinks(); !status.ok()) return status;
  link_receiver_->Close(r.link_id());
  return absl::OkStatus();
}

absl::Status WorkerHandler::ReleaseKv(const v1::ReleaseKvRequest& r) {
  if (r.reservation_id() != 0) {
    const RequestId reservation = static_cast<RequestId>(r.reservation_id());
    {
      // A receive whose outcome nobody will ask for any more.
      std::lock_guard<std::mutex> lock(receives_mu_);
      auto it = receives_.find(r.reservation_id());
      if (it != receives_.end()) {
        bool running;
        {
          std::lock_guard<std::mutex> outcome(it->second->mu);
          running = !it->second->outcome.has_value();
        }
        if (!running) {
          receives_.erase(it);
        } else if (link_receiver_ != nullptr) {
          // Nobody waits for that KV any more (its prefill failed, say): the receive stops
          // now instead of holding the pages until it times out, and its link closes.
          // Still running, it holds its link: the sender sends nothing else on it before
          // the outcome, and no receive is posted while receives_mu_ is held.
          LOG(Info) << "reservation " << reservation << " released while receiving: closing link "
                    << it->second->link_id;
          link_receiver_->Close(it->second->link_id);
        }
      }
    }
    // The closed receive's end frees the pages (a cancel meanwhile waits for it).
    return loop_->Run<absl::Status>(
        [&] { return loop_->scheduler().CancelReservation(reservation); });
  }
  const RequestId handle = static_cast<RequestId>(r.kv_handle());
  if (early_pushes_ != nullptr) early_pushes_->Forget(handle);
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
