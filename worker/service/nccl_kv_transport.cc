#include "worker/service/nccl_kv_transport.h"

#include <algorithm>
#include <cstdlib>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "worker/service/kv_wire.h"

namespace lserve {
namespace {

using SteadyClock = std::chrono::steady_clock;

uint64_t NewLinkId() {
  static std::mutex mu;
  static std::mt19937_64 generator{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  uint64_t id = 0;
  while (id == 0) id = generator();
  return id;
}

// Fault injection for tests (LSERVE_FAULT_KV_SEND_DELAY_MS): a pause between posting
// the receive and sending, so a test can kill a peer while a transfer is under way.
std::chrono::milliseconds FaultSendDelay() {
  const char* value = std::getenv("LSERVE_FAULT_KV_SEND_DELAY_MS");
  return std::chrono::milliseconds(value != nullptr ? std::atoll(value) : 0);
}

int64_t MillisLeft(SteadyClock::time_point deadline) {
  return std::max<int64_t>(
      1,
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now()).count());
}

}  // namespace

std::vector<nccl::ByteRange> ToNcclRanges(const std::vector<KvByteRange>& ranges) {
  std::vector<nccl::ByteRange> out;
  out.reserve(ranges.size());
  for (const KvByteRange& range : ranges) out.push_back({range.data, range.bytes, range.layer});
  return out;
}

NcclKvTransport::NcclKvTransport(std::shared_ptr<grpc::ChannelCredentials> credentials,
                                 int max_message_bytes, NcclKvOptions options,
                                 KvTransport* fallback,
                                 std::function<void(std::string_view)> on_fallback)
    : stubs_(std::move(credentials), max_message_bytes),
      options_(options),
      fallback_(fallback),
      on_fallback_(std::move(on_fallback)) {}

NcclKvTransport::~NcclKvTransport() = default;

absl::StatusOr<std::shared_ptr<NcclKvTransport::Link>> NcclKvTransport::LinkFor(
    const std::string& target, SteadyClock::time_point deadline) {
  CloseIdleLinks();
  auto cached = [&]() -> std::shared_ptr<Link> {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = links_.find(target);
    if (it == links_.end() || it->second->nccl->broken()) return nullptr;
    link_order_.remove(target);
    link_order_.push_back(target);
    it->second->last_used = SteadyClock::now();
    return it->second;
  };
  if (std::shared_ptr<Link> link = cached()) return link;
  // One opening per target at a time: hand-offs arriving meanwhile share its link.
  std::shared_ptr<std::mutex> opening;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = opening_[target];
    if (slot == nullptr) slot = std::make_shared<std::mutex>();
    opening = slot;
  }
  std::lock_guard<std::mutex> one_at_a_time(*opening);
  if (std::shared_ptr<Link> link = cached()) return link;
  absl::StatusOr<std::string> unique_id = nccl::NcclLink::NewUniqueId();
  if (!unique_id.ok()) return unique_id.status();
  auto link = std::make_shared<Link>();
  link->id = NewLinkId();
  const SteadyClock::time_point open_deadline =
      std::min(deadline, SteadyClock::now() + options_.open_timeout);
  // Both ranks join at once: the peer in its OpenKvLink handler, this one here.
  std::atomic<bool> peer_failed{false};
  absl::Status peer_status;
  v1::Worker::Stub* stub = stubs_.For(target);
  grpc::ClientContext context;
  SetDeadline(context, open_deadline);
  std::thread peer([&] {
    v1::OpenKvLinkRequest request;
    request.set_link_id(link->id);
    request.set_nccl_unique_id(*unique_id);
    request.set_timeout_ms(MillisLeft(open_deadline));
    v1::OpenKvLinkResponse response;
    peer_status = FromGrpc(stub->OpenKvLink(&context, request, &response),
                           absl::StrCat("opening an NCCL link to ", target));
    if (!peer_status.ok()) peer_failed = true;
  });
  absl::StatusOr<std::unique_ptr<nccl::NcclLink>> opened =
      nccl::NcclLink::Open(*unique_id, 0, options_.device, open_deadline, &peer_failed);
  if (!opened.ok()) context.TryCancel();  // the peer would wait for this rank in vain
  peer.join();
  if (!peer_status.ok()) return peer_status;
  if (!opened.ok()) {
    CloseOnPeer(target, link->id);
    return opened.status();
  }
  link->nccl = *std::move(opened);
  link->last_used = SteadyClock::now();
  LOG(Info) << "NCCL KV link to " << target << " open (device memory "
            << link->nccl->device_bytes() / (1 << 20) << " MiB)";
  std::shared_ptr<Link> evicted;
  std::string evicted_target;
  {
    std::lock_guard<std::mutex> lock(mu_);
    links_[target] = link;
    link_order_.remove(target);
    link_order_.push_back(target);
    if (links_.size() > options_.max_links) {
      evicted_target = link_order_.front();
      link_order_.pop_front();
      evicted = links_[evicted_target];
      links_.erase(evicted_target);
    }
  }
  // An evicted link closes here once a hand-off still using it lets go of it; the peer
  // closes its end now.
  if (evicted != nullptr) CloseOnPeer(evicted_target, evicted->id);
  return link;
}

void NcclKvTransport::CloseIdleLinks() {
  std::vector<std::pair<std::string, std::shared_ptr<Link>>> idle;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const SteadyClock::time_point now = SteadyClock::now();
    for (const auto& [target, link] : links_) {
      if (now - link->last_used < options_.link_idle_close || !link->mu.try_lock()) continue;
      link->mu.unlock();  // no hand-off holds it; none takes it from the map meanwhile
      idle.emplace_back(target, link);
    }
    for (const auto& [target, link] : idle) {
      links_.erase(target);
      link_order_.remove(target);
    }
  }
  for (const auto& [target, link] : idle) {
    LOG(Info) << "NCCL KV link to " << target << " unused for "
              << options_.link_idle_close.count() / 1000 << " s: closing it";
    CloseOnPeer(target, link->id);
  }
}

void NcclKvTransport::DropLink(const std::string& target, const std::shared_ptr<Link>& link,
                               std::string_view why) {
  link->nccl->Abort(why);
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = links_.find(target);
    if (it != links_.end() && it->second == link) {
      links_.erase(it);
      link_order_.remove(target);
    }
  }
  CloseOnPeer(target, link->id);
}

void NcclKvTransport::CloseOnPeer(const std::string& target, uint64_t link_id) {
  grpc::ClientContext context;
  SetDeadline(context, SteadyClock::now() + std::chrono::seconds(1));
  v1::CloseKvLinkRequest request;
  request.set_link_id(link_id);
  v1::CloseKvLinkResponse response;
  (void)stubs_.For(target)->CloseKvLink(&context, request, &response);  // best effort
}

absl::StatusOr<KvPushResult> NcclKvTransport::Fallback(const std::string& target,
                                                       uint64_t reservation_id, KvSource& source,
                                                       SteadyClock::time_point deadline,
                                                       const absl::Status& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    refused_until_[target] = SteadyClock::now() + options_.retry_link_after;
  }
  LOG(Warning) << "KV hand-off to " << target << " falls back to " << fallback_->name() << ": "
               << why;
  if (on_fallback_) on_fallback_(absl::StatusCodeToString(why.code()));
  return fallback_->Push(target, reservation_id, source, deadline);
}

absl::StatusOr<KvPushResult> NcclKvTransport::Push(const std::string& target,
                                                   uint64_t reservation_id, KvSource& source,
                                                   SteadyClock::time_point deadline) {
  bool refused = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = refused_until_.find(target);
    refused = it != refused_until_.end() && it->second > SteadyClock::now();
  }
  if (refused) {
    if (on_fallback_) on_fallback_("refused_recently");
    return fallback_->Push(target, reservation_id, source, deadline);
  }
  absl::StatusOr<KvPageExport> pages = source.PinPages();
  if (!pages.ok()) return pages.status();
  absl::StatusOr<KvPushResult> pushed;
  for (int attempt = 0; attempt < 2; ++attempt) {
    absl::StatusOr<std::shared_ptr<Link>> link = LinkFor(target, deadline);
    if (!link.ok()) return Fallback(target, reservation_id, source, deadline, link.status());
    absl::StatusCode code;
    {
      std::unique_lock<std::timed_mutex> lock((*link)->mu, std::defer_lock);
      if (!lock.try_lock_until(deadline)) {
        return absl::UnavailableError(
            absl::StrCat("KV transfer to ", target, ": the link stayed busy past the deadline"));
      }
      // A hand-off that failed on this link while this one waited for it dropped it.
      pushed = (*link)->nccl->broken()
                   ? absl::NotFoundError("the link was dropped")
                   : PushOverLink(target, **link, reservation_id, &*pages, source, deadline);
      if (pushed.ok()) return pushed;
      code = pushed.status().code();
      // Refused before any receive was posted (no room, a bad request, a reservation
      // gone or still receiving): the link is fine.
      if (code == absl::StatusCode::kResourceExhausted ||
          code == absl::StatusCode::kInvalidArgument) {
        return pushed.status();
      }
      if (code == absl::StatusCode::kFailedPrecondition ||
          code == absl::StatusCode::kAlreadyExists) {
        return absl::UnavailableError(pushed.status().message());
      }
      // Whatever failed after the receive may have been posted, the link is not trusted
      // again; it breaks before the next hand-off waiting for it can use it.
      (*link)->nccl->Abort(std::string(pushed.status().message()));
    }
    // Both ends close it, and the next hand-off opens a fresh one.
    DropLink(target, *link, std::string(pushed.status().message()));
    if (code == absl::StatusCode::kUnimplemented) {
      return Fallback(target, reservation_id, source, deadline, pushed.status());
    }
    // The peer no longer knows the link (it restarted, or closed it): once more, anew.
    if (code != absl::StatusCode::kNotFound) break;
  }
  // The peer's other codes are not the request's fault.
  return absl::UnavailableError(pushed.status().message());
}

absl::StatusOr<KvPushResult> NcclKvTransport::PushOverLink(const std::string& target, Link& link,
                                                           uint64_t reservation_id,
                                                           const KvPageExport* pages,
                                                           KvSource& source,
                                                           SteadyClock::time_point deadline) {
  const int64_t page_bytes = static_cast<int64_t>(
      pages->pages.dense.size() * source.dense_pool().PageBytesAllLayers() +
      pages->pages.streaming.size() * source.streaming_pool().PageBytesAllLayers());
  const std::chrono::milliseconds delay = FaultSendDelay();
  const std::chrono::milliseconds transfer_time =
      options_.transfer_timeout + delay + std::chrono::milliseconds(page_bytes / 1'000'000);
  // KV still being computed is sent layer by layer as it is written: the call's deadline
  // bounds the computation, and transfer_time runs from its end.
  QueueMarks* marks = source.layer_marks();
  if (marks == nullptr) deadline = std::min(deadline, SteadyClock::now() + transfer_time);
  v1::Worker::Stub* stub = stubs_.For(target);
  v1::PostKvReceiveRequest post;
  post.set_link_id(link.id);
  *post.mutable_header() = KvHeaderFor(pages->manifest, reservation_id);
  post.mutable_src_dense_pages()->Assign(pages->pages.dense.begin(), pages->pages.dense.end());
  post.mutable_src_streaming_pages()->Assign(pages->pages.streaming.begin(),
                                             pages->pages.streaming.end());
  // The receiver gives up on KV still being computed after a minute plus the transfer
  // time (a prefill chunk takes seconds at most); the sender then sends it again.
  post.set_timeout_ms(
      marks == nullptr
          ? MillisLeft(deadline)
          : std::min(MillisLeft(deadline), (std::chrono::minutes(1) + transfer_time).count()));
  v1::PostKvReceiveResponse posted;
  {
    grpc::ClientContext context;
    SetDeadline(context, deadline);
    RETURN_IF_ERROR(FromGrpc(stub->PostKvReceive(&context, post, &posted),
                             absl::StrCat("posting the KV receive on ", target)));
  }
  KvPlacement receiver;
  receiver.dense.assign(posted.dst_dense_pages().begin(), posted.dst_dense_pages().end());
  receiver.streaming.assign(posted.dst_streaming_pages().begin(),
                            posted.dst_streaming_pages().end());
  if (receiver.dense.size() != pages->pages.dense.size() ||
      receiver.streaming.size() != pages->pages.streaming.size()) {
    link.nccl->Abort("the receiver's page lists do not match");
    return absl::InternalError("the receiver claimed a different number of pages");
  }
  const std::vector<KvByteRange> ranges =
      KvTransferRanges(source.dense_pool(), source.streaming_pool(), pages->pages, receiver);
  const std::vector<nccl::ByteRange> sends = ToNcclRanges(ranges);
  if (delay.count() > 0) {
    LOG(Warning) << "fault injection: waiting " << delay.count() << " ms before sending KV to "
                 << target;
    std::this_thread::sleep_for(delay);
  }
  nccl::LayerGates gates;
  gates.placed = [marks, deadline](int layer) { return marks->WaitPlaced(layer, deadline); };
  gates.transfer_time = transfer_time;
  if (absl::Status sent = link.nccl->Transfer(sends, deadline, marks != nullptr ? &gates : nullptr);
      !sent.ok()) {
    return absl::UnavailableError(
        absl::StrCat("KV transfer to ", target, " over NCCL failed: ", sent.message()));
  }
  // From here the bytes are there; a failed confirmation still drops the link.
  v1::FinishKvReceiveRequest finish;
  finish.set_link_id(link.id);
  finish.set_reservation_id(reservation_id);
  v1::PushKvResponse finished;
  grpc::ClientContext context;
  SetDeadline(context, std::min(deadline, SteadyClock::now() + options_.transfer_timeout));
  RETURN_IF_ERROR(FromGrpc(stub->FinishKvReceive(&context, finish, &finished),
                           absl::StrCat("finishing the KV receive on ", target)));
  return KvPushResult{finished.bytes(), "nccl"};
}

}  // namespace lserve
