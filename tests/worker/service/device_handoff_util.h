// Two in-process workers with the GPU link replaced by a copy between the pools: the
// decode side claims pages and posts the receive, the sender copies its page runs into
// them (layer by layer as the prefill computes them, for a hand-off started during the
// prefill), and the reservation holds the KV only once the receive succeeded.
#ifndef LSERVE_TESTS_WORKER_SERVICE_DEVICE_HANDOFF_UTIL_H_
#define LSERVE_TESTS_WORKER_SERVICE_DEVICE_HANDOFF_UTIL_H_

#include <algorithm>
#include <atomic>
#include <cstring>
#include <future>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/worker/engine_test_util.h"
#include "tests/worker/service/worker_test_util.h"
#include "worker/service/kv_page_runs.h"
#include "worker/service/worker_handler.h"

namespace lserve::testing {

// Remembers the receives the handler posts.
class FakeLinkReceiver : public KvLinkReceiver {
 public:
  struct Posted {
    uint64_t link_id = 0;
    std::vector<KvByteRange> ranges;
    std::function<void(absl::Status)> done;
  };
  absl::StatusOr<int64_t> Open(uint64_t link_id, std::string_view,
                               std::chrono::steady_clock::time_point) override {
    std::lock_guard<std::mutex> lock(mu);
    links.push_back(link_id);
    return 4096;
  }
  absl::Status PostReceive(uint64_t link_id, std::vector<KvByteRange> ranges,
                           std::chrono::steady_clock::time_point,
                           std::function<void(absl::Status)> done) override {
    std::lock_guard<std::mutex> lock(mu);
    if (std::find(links.begin(), links.end(), link_id) == links.end()) {
      return absl::FailedPreconditionError("no such link");
    }
    posted.push_back({link_id, std::move(ranges), std::move(done)});
    return absl::OkStatus();
  }
  // As an aborted communicator: the receives still posted on the link fail.
  void Close(uint64_t link_id) override {
    std::vector<Posted> failed;
    {
      std::lock_guard<std::mutex> lock(mu);
      links.erase(std::remove(links.begin(), links.end(), link_id), links.end());
      for (auto it = posted.begin(); it != posted.end();) {
        if (it->link_id != link_id) {
          ++it;
          continue;
        }
        failed.push_back(std::move(*it));
        it = posted.erase(it);
      }
      ++closed;
    }
    for (Posted& receive : failed) receive.done(absl::AbortedError("the link was closed"));
  }
  std::optional<Posted> TakeLast() {
    std::lock_guard<std::mutex> lock(mu);
    if (posted.empty()) return std::nullopt;
    Posted last = std::move(posted.back());
    posted.pop_back();
    return last;
  }

  std::mutex mu;
  std::vector<uint64_t> links;
  std::vector<Posted> posted;
  int closed = 0;
};

inline int64_t UsedPages(Worker& w) {
  return w.loop
      ->Run<absl::StatusOr<int64_t>>([&]() -> absl::StatusOr<int64_t> {
        const KvUsage usage = w.engine->kv_store().Usage();
        return usage.dense_used + usage.streaming_used;
      })
      .value_or(-1);
}

// Copies the sender's page runs into the posted receive, as NCCL would.
class CopyTransport : public KvTransport {
 public:
  enum class Mode { kDeliver, kPeerDies, kReleaseMidway, kCancelMidway, kReservationReleased };
  CopyTransport(WorkerHandler** target, FakeLinkReceiver* link, bool streams = false)
      : streams(streams), target_(target), link_(link) {}
  std::string_view name() const override { return "copy"; }
  bool sends_while_computing() const override { return streams; }
  absl::StatusOr<KvPushResult> Push(const std::string&, uint64_t reservation, KvSource& source,
                                    std::chrono::steady_clock::time_point deadline) override {
    std::lock_guard<std::mutex> one_at_a_time(push_mu_);  // as one link
    ++pushes;
    QueueMarks* marks = source.layer_marks();
    if (marks != nullptr) ++streamed;
    v1::OpenKvLinkRequest open;
    open.set_link_id(7);
    if (auto opened = (*target_)->OpenKvLink(open, deadline); !opened.ok()) {
      return opened.status();
    }
    absl::StatusOr<KvPageExport> pages = source.PinPages();
    if (!pages.ok()) return pages.status();
    v1::PostKvReceiveRequest post;
    post.set_link_id(7);
    *post.mutable_header() = KvHeaderFor(pages->manifest, reservation);
    post.mutable_src_dense_pages()->Assign(pages->pages.dense.begin(), pages->pages.dense.end());
    post.mutable_src_streaming_pages()->Assign(pages->pages.streaming.begin(),
                                               pages->pages.streaming.end());
    absl::StatusOr<v1::PostKvReceiveResponse> posted = (*target_)->PostKvReceive(post);
    if (!posted.ok()) return posted.status();
    KvPlacement receiver;
    receiver.dense.assign(posted->dst_dense_pages().begin(), posted->dst_dense_pages().end());
    receiver.streaming.assign(posted->dst_streaming_pages().begin(),
                              posted->dst_streaming_pages().end());
    const std::vector<KvByteRange> sends =
        KvTransferRanges(source.dense_pool(), source.streaming_pool(), pages->pages, receiver);
    if (mode == Mode::kReservationReleased) {
      // The router gave up on the hand-off: the decode side stops the receive at once.
      v1::ReleaseKvRequest release;
      release.set_reservation_id(reservation);
      EXPECT_TRUE((*target_)->ReleaseKv(release).ok());
      decode_pages_after_release = UsedPages(*decode_worker);
      EXPECT_FALSE(link_->TakeLast().has_value());
      return absl::UnavailableError("the receiver closed the link");
    }
    std::optional<FakeLinkReceiver::Posted> taken = link_->TakeLast();
    if (!taken.has_value()) return absl::UnavailableError("no receive posted");
    FakeLinkReceiver::Posted receive = *std::move(taken);
    EXPECT_EQ(receive.ranges.size(), sends.size());
    absl::Status outcome = absl::OkStatus();
    if (mode == Mode::kPeerDies || failures_left > 0) {
      if (failures_left > 0) --failures_left;
      outcome = absl::DeadlineExceededError("the sender stopped answering");
    } else {
      for (size_t i = 0; i < sends.size() && i < receive.ranges.size(); ++i) {
        EXPECT_EQ(receive.ranges[i].bytes, sends[i].bytes);
        EXPECT_EQ(receive.ranges[i].layer, sends[i].layer);
        // As NCCL on the link's stream: a layer still being computed is sent once done.
        if (marks != nullptr) {
          absl::StatusOr<void*> placed = marks->WaitPlaced(sends[i].layer, deadline);
          if (!placed.ok()) {
            outcome = placed.status();
            break;
          }
          if (sends[i].layer + 1 < marks->size() && marks->num_placed() < marks->size()) {
            ++layers_sent_while_computing;
          }
        }
        std::memcpy(receive.ranges[i].data, sends[i].data, sends[i].bytes);
      }
    }
    if (mode == Mode::kReleaseMidway) {
      v1::ReleaseKvRequest release;
      release.set_kv_handle(handle);
      EXPECT_TRUE(prefill->ReleaseKv(release).ok());
      released_pages_still_held =
          prefill_worker->loop
              ->Run<absl::StatusOr<int64_t>>([&]() -> absl::StatusOr<int64_t> {
                return prefill_worker->engine->kv_store().Usage().dense_used;
              })
              .value_or(-1);
    }
    if (mode == Mode::kCancelMidway) {
      v1::ReleaseKvRequest cancel;
      cancel.set_reservation_id(reservation);
      EXPECT_TRUE((*target_)->ReleaseKv(cancel).ok());
    }
    std::thread([&] { receive.done(outcome); }).join();
    v1::FinishKvReceiveRequest finish;
    finish.set_link_id(7);
    finish.set_reservation_id(reservation);
    absl::StatusOr<v1::PushKvResponse> finished = (*target_)->FinishKvReceive(finish, deadline);
    if (!finished.ok()) return finished.status();
    EXPECT_EQ(finished->bytes(), TotalBytes(sends));
    return KvPushResult{finished->bytes(), "copy"};
  }

  Mode mode = Mode::kDeliver;
  const bool streams;     // takes sources still being computed
  int failures_left = 0;  // the next pushes that fail like kPeerDies
  std::atomic<int> pushes{0};
  std::atomic<int> streamed{0};  // pushes of KV still being computed
  std::atomic<int> layers_sent_while_computing{0};
  int64_t decode_pages_after_release = -1;
  Worker* decode_worker = nullptr;
  uint64_t handle = 0;
  WorkerHandler* prefill = nullptr;
  Worker* prefill_worker = nullptr;
  int64_t released_pages_still_held = -1;

 private:
  WorkerHandler** target_;
  FakeLinkReceiver* link_;
  std::mutex push_mu_;
};

struct HandOff {
  // `streams`: the transport takes KV still being computed (hand-offs during prefills).
  explicit HandOff(bool streams = false)
      : transport(&decode_handler, &link, streams), prefill(v1::WORKER_ROLE_PREFILL, &transport) {
    decode_handler = decode.handler.get();
    decode.handler->set_kv_link_receiver(&link);
    transport.prefill = prefill.handler.get();
    transport.prefill_worker = &prefill;
    transport.decode_worker = &decode;
  }
  // Prefills `request` and moves its KV into a fresh reservation; returns the first token.
  // With `early`, the prefill names the decode worker and reservation, as the router does.
  absl::StatusOr<v1::GeneratedToken> Run(const v1::GenerateRequest& request, uint64_t* reservation,
                                         absl::Status* transferred, bool early = false) {
    v1::ReserveKvRequest reserve;
    reserve.set_prompt_tokens(request.prompt_token_ids_size());
    reserve.set_max_tokens(request.sampling().max_tokens());
    auto reserved = decode.handler->ReserveKv(reserve);
    if (!reserved.ok()) return reserved.status();
    *reservation = reserved->reservation_id();
    std::promise<absl::StatusOr<v1::PrefillResponse>> prefilled;
    v1::PrefillRequest prefill_request;
    *prefill_request.mutable_request() = request;
    if (early) {
      prefill_request.set_handoff_target("decode");
      prefill_request.set_handoff_reservation_id(*reservation);
    }
    auto started = prefill.handler->StartPrefill(
        prefill_request, std::nullopt,
        [&](absl::StatusOr<v1::PrefillResponse> r) { prefilled.set_value(std::move(r)); });
    if (!started.ok()) return started.status();
    absl::StatusOr<v1::PrefillResponse> first = prefilled.get_future().get();
    if (!first.ok()) return first.status();
    transport.handle = first->kv_handle();
    v1::TransferKvRequest transfer;
    transfer.set_kv_handle(first->kv_handle());
    transfer.set_target("decode");
    transfer.set_reservation_id(*reservation);
    auto moved =
        prefill.handler->TransferKv(transfer, SteadyClock::now() + std::chrono::seconds(30));
    *transferred = moved.status();
    if (moved.ok()) {
      EXPECT_EQ(moved->transport(), "copy");
    }
    v1::ReleaseKvRequest release;
    release.set_kv_handle(first->kv_handle());
    (void)prefill.handler->ReleaseKv(release);
    return first->first_token();
  }
  Collected Decode(const v1::GenerateRequest& request, uint64_t reservation,
                   const v1::GeneratedToken& first) {
    v1::DecodeRequest decode_request;
    decode_request.set_reservation_id(reservation);
    *decode_request.mutable_request() = request;
    *decode_request.mutable_first_token() = first;
    return Stream([&](ResponseSink sink) {
      return decode.handler->StartDecode(decode_request, std::nullopt, std::move(sink));
    });
  }

  FakeLinkReceiver link;
  WorkerHandler* decode_handler = nullptr;
  CopyTransport transport;
  Worker prefill;
  Worker decode{v1::WORKER_ROLE_DECODE};
};

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_WORKER_SERVICE_DEVICE_HANDOFF_UTIL_H_
