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
#include "tests/worker/service/device_handoff_util.h"

namespace lserve {
namespace {

using testing::Collected;
using testing::CopyTransport;
using testing::FakeLinkReceiver;
using testing::HandOff;
using testing::Request;
using testing::Stream;
using testing::UsedPages;
using testing::Worker;

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
