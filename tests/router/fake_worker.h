// In-process fake workers for the router's tests: a deterministic "model" (each token a
// hash of the whole context, so a resumed stream continues exactly), the hand-off API with
// reservations and leases that the test can audit, and scripted faults.
#ifndef LSERVE_TESTS_ROUTER_FAKE_WORKER_H_
#define LSERVE_TESTS_ROUTER_FAKE_WORKER_H_

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "router/worker_client.h"

namespace lserve::testing {

// The next token of a context.
int32_t NextToken(const std::vector<int32_t>& context);
// `count` tokens continuing `prompt`.
std::vector<int32_t> Continue(std::vector<int32_t> prompt, int count);

class FakeCluster;

class FakeWorker final : public WorkerClient {
 public:
  FakeWorker(FakeCluster* cluster, std::string address) : cluster_(cluster), address_(address) {}
  const std::string& address() const override { return address_; }

  absl::Status Generate(const v1::GenerateRequest& request, Deadline deadline,
                        const StreamCallback& on_response, Cancellation* cancel) override;
  absl::Status Decode(const v1::DecodeRequest& request, Deadline deadline,
                      const StreamCallback& on_response, Cancellation* cancel) override;
  absl::StatusOr<v1::ReserveKvResponse> ReserveKv(const v1::ReserveKvRequest& request,
                                                  Deadline deadline) override;
  absl::StatusOr<v1::PrefillResponse> Prefill(const v1::PrefillRequest& request, Deadline deadline,
                                              Cancellation* cancel) override;
  absl::StatusOr<v1::TransferKvResponse> TransferKv(const v1::TransferKvRequest& request,
                                                    Deadline deadline,
                                                    Cancellation* cancel) override;
  absl::Status ReleaseKv(const v1::ReleaseKvRequest& request, Deadline deadline) override;
  absl::StatusOr<v1::Load> GetLoad(Deadline deadline) override;
  absl::StatusOr<v1::ModelInfo> GetModelInfo(Deadline deadline) override;
  absl::StatusOr<bool> Healthy(Deadline deadline) override;

  // Faults. A dead worker fails every call with UNAVAILABLE.
  std::atomic<bool> dead{false};
  // Streams fail with UNAVAILABLE after this many tokens (-1: never); one-shot.
  std::atomic<int> fail_stream_after{-1};
  std::atomic<bool> fail_prefill{false};
  std::atomic<int> cut_transfers{0};         // this many next pushes from this worker are cut
  std::atomic<bool> die_on_transfer{false};  // the process dies during its push
  absl::Status generate_error;               // returned by Generate when set
  // Blocks streams until released (for admission tests).
  std::atomic<bool> hold_streams{false};

  // What the test audits.
  std::atomic<int> generate_calls{0};
  std::atomic<int> decode_calls{0};
  std::atomic<int> prefill_calls{0};
  std::atomic<int> transfer_calls{0};
  size_t reservations() const;  // held now
  size_t leases() const;

 private:
  absl::Status Stream(std::vector<int32_t> context, int count, const std::string& request_id,
                      const StreamCallback& on_response, Cancellation* cancel);

  FakeCluster* cluster_;
  std::string address_;
  mutable std::mutex mu_;
  uint64_t next_id_ = 1;
  std::map<uint64_t, bool> reserved_;  // id -> filled
  std::map<uint64_t, std::vector<int32_t>> leased_;
  friend class FakeCluster;
};

class FakeCluster final : public WorkerClientFactory {
 public:
  std::shared_ptr<WorkerClient> Connect(const std::string& address) override;
  FakeWorker& worker(const std::string& address);
  // Fills reservation `id` on `target` (the KV push).
  absl::Status Fill(const std::string& target, uint64_t id);

 private:
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<FakeWorker>> workers_;
};

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_ROUTER_FAKE_WORKER_H_
