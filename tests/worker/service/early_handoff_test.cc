// Hand-offs started during the prefill: a prefill that names its decode worker and
// reservation sends its KV layer by layer while the last chunk computes, and TransferKv
// collects that transfer; a failed one is sent again on request. A reservation released
// while it receives stops the receive and frees its pages at once.
#include "gtest/gtest.h"
#include "tests/worker/service/device_handoff_util.h"

namespace lserve {
namespace {

using testing::Collected;
using testing::CopyTransport;
using testing::HandOff;
using testing::Request;
using testing::Stream;
using testing::UsedPages;
using testing::Worker;

std::vector<int32_t> Unified(const v1::GenerateRequest& request) {
  Worker unified(v1::WORKER_ROLE_UNIFIED);
  return Stream([&](ResponseSink sink) {
           return unified.handler->StartGenerate(request, std::nullopt, std::move(sink));
         })
      .tokens;
}

std::vector<int32_t> Tokens(const v1::GeneratedToken& first, const Collected& rest) {
  std::vector<int32_t> tokens = {first.token_id()};
  tokens.insert(tokens.end(), rest.tokens.begin(), rest.tokens.end());
  return tokens;
}

// Reserves, prefills naming the reservation, transfers and decodes: the tokens are the
// unified worker's, after `pushes` pushes of which `streamed` went during the prefill.
void ExpectEarlyHandOff(HandOff& h, const v1::GenerateRequest& request, int pushes, int streamed) {
  uint64_t reservation = 0;
  absl::Status transferred;
  absl::StatusOr<v1::GeneratedToken> first =
      h.Run(request, &reservation, &transferred, /*early=*/true);
  ASSERT_TRUE(first.ok()) << first.status();
  ASSERT_TRUE(transferred.ok()) << transferred;
  EXPECT_EQ(h.transport.pushes.load(), pushes);
  EXPECT_EQ(h.transport.streamed.load(), streamed);
  const Collected rest = h.Decode(request, reservation, *first);
  ASSERT_TRUE(rest.status.ok()) << rest.status;
  EXPECT_EQ(Tokens(*first, rest), Unified(request));
  EXPECT_EQ(UsedPages(h.prefill), 0);
  EXPECT_EQ(UsedPages(h.decode), 0);
}

TEST(EarlyHandOffTest, KvSentDuringThePrefillGivesTheUnifiedWorkersTokens) {
  HandOff h(/*streams=*/true);
  // One push, started by the prefill's last step; TransferKv only collected it.
  ExpectEarlyHandOff(h, Request(testing::Ids(300, 11), 12), 1, 1);
}

TEST(EarlyHandOffTest, AFailedEarlyPushIsSentAgainWhenTransferKvAsks) {
  HandOff h(/*streams=*/true);
  h.transport.failures_left = 1;
  // The second push reads the leased KV.
  ExpectEarlyHandOff(h, Request(testing::Ids(200, 12), 8), 2, 1);
}

TEST(EarlyHandOffTest, APrefillNamingAnotherTargetThanTransferKvIsSentAnew) {
  HandOff h(/*streams=*/true);
  const v1::GenerateRequest request = Request(testing::Ids(100, 13), 8);
  v1::ReserveKvRequest reserve;
  reserve.set_prompt_tokens(request.prompt_token_ids_size());
  reserve.set_max_tokens(8);
  const uint64_t elsewhere = h.decode.handler->ReserveKv(reserve)->reservation_id();
  // The prefill streams into `elsewhere`; TransferKv asks for another reservation.
  v1::PrefillRequest prefill;
  *prefill.mutable_request() = request;
  prefill.set_handoff_target("decode");
  prefill.set_handoff_reservation_id(elsewhere);
  std::promise<absl::StatusOr<v1::PrefillResponse>> prefilled;
  ASSERT_TRUE(h.prefill.handler
                  ->StartPrefill(prefill, std::nullopt,
                                 [&](absl::StatusOr<v1::PrefillResponse> r) {
                                   prefilled.set_value(std::move(r));
                                 })
                  .ok());
  absl::StatusOr<v1::PrefillResponse> first = prefilled.get_future().get();
  ASSERT_TRUE(first.ok()) << first.status();
  const uint64_t reservation = h.decode.handler->ReserveKv(reserve)->reservation_id();
  v1::TransferKvRequest transfer;
  transfer.set_kv_handle(first->kv_handle());
  transfer.set_target("decode");
  transfer.set_reservation_id(reservation);
  ASSERT_TRUE(
      h.prefill.handler->TransferKv(transfer, SteadyClock::now() + std::chrono::seconds(30)).ok());
  EXPECT_EQ(h.transport.pushes.load(), 2);
  const Collected rest = h.Decode(request, reservation, first->first_token());
  ASSERT_TRUE(rest.status.ok()) << rest.status;
  EXPECT_EQ(Tokens(first->first_token(), rest), Unified(request));
  v1::ReleaseKvRequest release;
  release.set_kv_handle(first->kv_handle());
  EXPECT_TRUE(h.prefill.handler->ReleaseKv(release).ok());
  // `elsewhere` got its copy too; releasing it frees the pages.
  v1::ReleaseKvRequest cancel;
  cancel.set_reservation_id(elsewhere);
  EXPECT_TRUE(h.decode.handler->ReleaseKv(cancel).ok());
  EXPECT_EQ(UsedPages(h.prefill), 0);
  EXPECT_EQ(UsedPages(h.decode), 0);
}

TEST(EarlyHandOffTest, AReservationReleasedWhileReceivingStopsTheReceiveAndFreesItsPages) {
  HandOff h;
  h.transport.mode = CopyTransport::Mode::kReservationReleased;
  const v1::GenerateRequest request = Request(testing::Ids(150, 14), 8);
  uint64_t reservation = 0;
  absl::Status transferred;
  ASSERT_TRUE(h.Run(request, &reservation, &transferred).ok());
  EXPECT_FALSE(transferred.ok());
  EXPECT_EQ(h.transport.decode_pages_after_release, 0);  // freed before any timeout
  EXPECT_EQ(h.link.closed, 1);
  EXPECT_TRUE(h.decode.handler->Idle());
  EXPECT_EQ(UsedPages(h.prefill), 0);
}

}  // namespace
}  // namespace lserve
