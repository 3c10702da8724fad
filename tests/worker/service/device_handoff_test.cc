// The device transport's protocol between two in-process workers, with the GPU link
// replaced by a copy between the pools: the decode side claims pages and posts the
// receive, the sender copies its page runs into them, and the reservation holds the KV
// only once the receive succeeded. Failures, cancels and releases in the middle of a
// transfer leave no page behind.
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/worker/engine_test_util.h"
#include "tests/worker/service/worker_test_util.h"
#include "worker/service/kv_page_runs.h"
#include "worker/service/worker_handler.h"

namespace lserve {
namespace {

using testing::Collected;
using testing::Request;
using testing::Stream;
using testing::Worker;

// Remembers the receives the handler posts.
class FakeLinkReceiver : public KvLinkReceiver {
 public:
  struct Posted {
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
    posted.push_back({std::move(ranges), std::move(done)});
    return absl::OkStatus();
  }
  void Close(uint64_t link_id) override {
    std::lock_guard<std::mutex> lock(mu);
    links.erase(std::remove(links.begin(), links.end(), link_id), links.end());
  }
  Posted TakeLast() {
    std::lock_guard<std::mutex> lock(mu);
    Posted last = std::move(posted.back());
    posted.pop_back();
    return last;
  }

  std::mutex mu;
  std::vector<uint64_t> links;
  std::vector<Posted> posted;
};

// Copies the sender's page runs into the posted receive, as NCCL would.
class CopyTransport : public KvTransport {
 public:
  enum class Mode { kDeliver, kPeerDies, kReleaseMidway, kCancelMidway };
  CopyTransport(WorkerHandler** target, FakeLinkReceiver* link) : target_(target), link_(link) {}
  std::string_view name() const override { return "copy"; }
  absl::StatusOr<KvPushResult> Push(const std::string&, uint64_t reservation, KvSource& source,
                                    std::chrono::steady_clock::time_point deadline) override {
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
    FakeLinkReceiver::Posted receive = link_->TakeLast();
    EXPECT_EQ(receive.ranges.size(), sends.size());
    absl::Status outcome = absl::OkStatus();
    if (mode == Mode::kPeerDies) {
      outcome = absl::DeadlineExceededError("the sender stopped answering");
    } else {
      for (size_t i = 0; i < sends.size() && i < receive.ranges.size(); ++i) {
        EXPECT_EQ(receive.ranges[i].bytes, sends[i].bytes);
        std::memcpy(receive.ranges[i].data, sends[i].data, sends[i].bytes);
      }
    }
    if (mode == Mode::kReleaseMidway) {
      v1::ReleaseKvRequest release;
      release.set_kv_handle(handle);
      EXPECT_TRUE(prefill->ReleaseKv(release).ok());
      released_pages_still_held = prefill_worker->loop->Run<int64_t>(
          [&] { return prefill_worker->engine->kv_store().Usage().dense_used; });
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
  uint64_t handle = 0;
  WorkerHandler* prefill = nullptr;
  Worker* prefill_worker = nullptr;
  int64_t released_pages_still_held = -1;

 private:
  WorkerHandler** target_;
  FakeLinkReceiver* link_;
};

int64_t UsedPages(Worker& w) {
  return w.loop->Run<int64_t>([&] {
    const KvUsage usage = w.engine->kv_store().Usage();
    return usage.dense_used + usage.streaming_used;
  });
}

struct HandOff {
  HandOff() : transport(&decode_handler, &link), prefill(v1::WORKER_ROLE_PREFILL, &transport) {
    decode_handler = decode.handler.get();
    decode.handler->set_kv_link_receiver(&link);
    transport.prefill = prefill.handler.get();
    transport.prefill_worker = &prefill;
  }
  // Prefills `request` and moves its KV into a fresh reservation; returns the first token.
  absl::StatusOr<v1::GeneratedToken> Run(const v1::GenerateRequest& request, uint64_t* reservation,
                                         absl::Status* transferred) {
    v1::ReserveKvRequest reserve;
    reserve.set_prompt_tokens(request.prompt_token_ids_size());
    reserve.set_max_tokens(request.sampling().max_tokens());
    auto reserved = decode.handler->ReserveKv(reserve);
    if (!reserved.ok()) return reserved.status();
    *reservation = reserved->reservation_id();
    std::promise<absl::StatusOr<v1::PrefillResponse>> prefilled;
    v1::PrefillRequest prefill_request;
    *prefill_request.mutable_request() = request;
    auto started = prefill.handler->StartPrefill(
        prefill_request, std::nullopt,
        [&](absl::StatusOr<v1::PrefillResponse> r) { prefilled.set_value(std::move(r)); });
    if (!started.ok()) return started.status();
    absl::StatusOr<v1::PrefillResponse> first = prefilled.get_future().get();
    if (!first.ok()) return first.status();
    transport.handle = first->kv_handle();
    v1::TransferKvRequest transfer;
    transfer.set_kv_handle(first->kv_handle());
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

TEST(DeviceHandOffTest, PagesCopiedIntoClaimedPagesGiveTheUnifiedWorkersTokens) {
  HandOff h;
  Worker unified(v1::WORKER_ROLE_UNIFIED);
  const v1::GenerateRequest request = Request(testing::Ids(150, 5), 16);
  const Collected expected = Stream([&](ResponseSink sink) {
    return unified.handler->StartGenerate(request, std::nullopt, std::move(sink));
  });
  uint64_t reservation = 0;
  absl::Status transferred;
  absl::StatusOr<v1::GeneratedToken> first = h.Run(request, &reservation, &transferred);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(transferred.ok()) << transferred;
  const Collected rest = h.Decode(request, reservation, *first);
  ASSERT_TRUE(rest.status.ok()) << rest.status;
  std::vector<int32_t> got = {first->token_id()};
  got.insert(got.end(), rest.tokens.begin(), rest.tokens.end());
  EXPECT_EQ(got, expected.tokens);
  EXPECT_EQ(UsedPages(h.prefill), 0);
  EXPECT_EQ(UsedPages(h.decode), 0);
}

TEST(DeviceHandOffTest, AFailedReceiveFreesItsPagesAndTheReservationTakesARetry) {
  HandOff h;
  const v1::GenerateRequest request = Request(testing::Ids(150, 6), 8);
  h.transport.mode = CopyTransport::Mode::kPeerDies;
  uint64_t reservation = 0;
  absl::Status transferred;
  ASSERT_TRUE(h.Run(request, &reservation, &transferred).ok());
  EXPECT_EQ(transferred.code(), absl::StatusCode::kDeadlineExceeded) << transferred;
  EXPECT_EQ(UsedPages(h.decode), 0);   // the claimed pages went back
  EXPECT_EQ(UsedPages(h.prefill), 0);  // the lease was released
  // Decoding from the unfilled reservation is refused; a second transfer fills it.
  v1::GeneratedToken token;
  token.set_token_id(1);
  EXPECT_EQ(h.Decode(request, reservation, token).status.code(),
            absl::StatusCode::kFailedPrecondition);
  v1::ReleaseKvRequest cancel;
  cancel.set_reservation_id(reservation);
  EXPECT_TRUE(h.decode.handler->ReleaseKv(cancel).ok());
  h.transport.mode = CopyTransport::Mode::kDeliver;
  absl::StatusOr<v1::GeneratedToken> first = h.Run(request, &reservation, &transferred);
  ASSERT_TRUE(first.ok() && transferred.ok()) << transferred;
  EXPECT_TRUE(h.Decode(request, reservation, *first).status.ok());
  EXPECT_EQ(UsedPages(h.decode), 0);
}

TEST(DeviceHandOffTest, AReleaseDuringTheTransferWaitsForIt) {
  HandOff h;
  h.transport.mode = CopyTransport::Mode::kReleaseMidway;
  const v1::GenerateRequest request = Request(testing::Ids(150, 7), 8);
  uint64_t reservation = 0;
  absl::Status transferred;
  ASSERT_TRUE(h.Run(request, &reservation, &transferred).ok());
  ASSERT_TRUE(transferred.ok()) << transferred;
  EXPECT_GT(h.transport.released_pages_still_held, 0);  // pinned while the pages are read
  EXPECT_EQ(UsedPages(h.prefill), 0);                   // freed once the transfer ended
}

TEST(DeviceHandOffTest, ACancelDuringTheReceiveFreesThePagesWhenItEnds) {
  HandOff h;
  h.transport.mode = CopyTransport::Mode::kCancelMidway;
  const v1::GenerateRequest request = Request(testing::Ids(150, 8), 8);
  uint64_t reservation = 0;
  absl::Status transferred;
  ASSERT_TRUE(h.Run(request, &reservation, &transferred).ok());
  EXPECT_EQ(transferred.code(), absl::StatusCode::kCancelled) << transferred;
  EXPECT_EQ(UsedPages(h.decode), 0);
  EXPECT_TRUE(h.decode.handler->Idle());
}

TEST(DeviceHandOffTest, WorkersWithoutALinkReceiverOrOfTheWrongRoleRefuse) {
  Worker decode(v1::WORKER_ROLE_DECODE);
  v1::PostKvReceiveRequest post;
  EXPECT_EQ(decode.handler->PostKvReceive(post).status().code(), absl::StatusCode::kUnimplemented);
  FakeLinkReceiver link;
  Worker prefill(v1::WORKER_ROLE_PREFILL);
  prefill.handler->set_kv_link_receiver(&link);
  EXPECT_EQ(prefill.handler->PostKvReceive(post).status().code(),
            absl::StatusCode::kFailedPrecondition);
  decode.handler->set_kv_link_receiver(&link);
  // A header whose page lists disagree with the sender's is refused before any claim.
  post.mutable_header()->set_dtype("f32");
  post.mutable_header()->set_num_dense_pages(2);
  post.add_src_dense_pages(0);
  EXPECT_EQ(decode.handler->PostKvReceive(post).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(KvPageRunsTest, RunsAreConsecutiveOnBothSides) {
  const std::vector<KvPageRun> runs = MatchedPageRuns({4, 5, 6, 9, 10, 2}, {0, 1, 7, 8, 9, 3});
  const std::vector<KvPageRun> expected = {{4, 0, 2}, {6, 7, 1}, {9, 8, 2}, {2, 3, 1}};
  EXPECT_EQ(runs, expected);
  EXPECT_TRUE(MatchedPageRuns({1, 2}, {1}).empty());
  // The other side computes the same runs, mirrored.
  const std::vector<KvPageRun> mirrored = MatchedPageRuns({0, 1, 7, 8, 9, 3}, {4, 5, 6, 9, 10, 2});
  ASSERT_EQ(mirrored.size(), runs.size());
  for (size_t i = 0; i < runs.size(); ++i) {
    EXPECT_EQ(mirrored[i].local, runs[i].remote);
    EXPECT_EQ(mirrored[i].count, runs[i].count);
  }
}

}  // namespace
}  // namespace lserve
