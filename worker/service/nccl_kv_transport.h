// The KV hand-off between GPU workers over NCCL (DESIGN.md §1). The sender opens one
// two-rank communicator per decode worker, lazily, bootstrapping it over the workers'
// gRPC channel (Worker.OpenKvLink carries the unique id); links are cached, a bounded
// number. Each hand-off claims pages on the receiver (Worker.PostKvReceive), sends the
// page runs straight from the pools to the pools, layer by layer, and confirms
// (Worker.FinishKvReceive). A peer that cannot take NCCL (a CPU worker, a GPU it cannot
// reach, NCCL failing to start) gets the fallback transport, with a warning and a metric.
#ifndef LSERVE_WORKER_SERVICE_NCCL_KV_TRANSPORT_H_
#define LSERVE_WORKER_SERVICE_NCCL_KV_TRANSPORT_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "kernels/nccl/nccl_link.h"
#include "lserve/v1/worker.grpc.pb.h"
#include "worker/service/kv_transport.h"
#include "worker/service/worker_stubs.h"

namespace lserve {

struct NcclKvOptions {
  int device = 0;  // the worker's CUDA device, where its pools are
  // Hand-offs named in the prefill request go while its last chunk computes the KV.
  bool send_during_prefill = true;
  std::chrono::milliseconds open_timeout{30000};
  size_t max_links = 16;  // each takes 0.4-1 GiB of device memory on both GPUs
  // A link unused this long closes (at both ends), giving its device memory back; the
  // next hand-off to that peer opens a fresh one.
  std::chrono::milliseconds link_idle_close{600000};
  // How long a peer that refused a link gets the fallback before NCCL is tried again.
  std::chrono::milliseconds retry_link_after{60000};
  // A transfer (and the peer's receive) gives up after this plus a second per GB, or at
  // the call's deadline if sooner: a dead peer costs that long, never a hang.
  std::chrono::milliseconds transfer_timeout{2000};
};

// The byte ranges of a page transfer as an NCCL link takes them.
std::vector<nccl::ByteRange> ToNcclRanges(const std::vector<KvByteRange>& ranges);

class NcclKvTransport final : public KvTransport {
 public:
  // `fallback` must outlive the transport; `on_fallback` (may be empty) hears the reason
  // each time a hand-off goes to the fallback.
  NcclKvTransport(std::shared_ptr<grpc::ChannelCredentials> credentials, int max_message_bytes,
                  NcclKvOptions options, KvTransport* fallback,
                  std::function<void(std::string_view reason)> on_fallback);
  ~NcclKvTransport() override;
  std::string_view name() const override { return "nccl"; }
  bool sends_while_computing() const override { return options_.send_during_prefill; }
  absl::StatusOr<KvPushResult> Push(const std::string& target, uint64_t reservation_id,
                                    KvSource& source,
                                    std::chrono::steady_clock::time_point deadline) override;

 private:
  struct Link {
    std::timed_mutex mu;  // one hand-off at a time per link
    uint64_t id = 0;
    std::unique_ptr<nccl::NcclLink> nccl;
    std::chrono::steady_clock::time_point last_used;  // guarded by the transport's mu_
  };
  // Closes the links unused for options_.link_idle_close that no hand-off holds.
  void CloseIdleLinks();
  absl::StatusOr<std::shared_ptr<Link>> LinkFor(const std::string& target,
                                                std::chrono::steady_clock::time_point deadline);
  // Aborts the link, forgets it, and asks the peer to close its end.
  void DropLink(const std::string& target, const std::shared_ptr<Link>& link, std::string_view why);
  void CloseOnPeer(const std::string& target, uint64_t link_id);
  absl::StatusOr<KvPushResult> Fallback(const std::string& target, uint64_t reservation_id,
                                        KvSource& source,
                                        std::chrono::steady_clock::time_point deadline,
                                        const absl::Status& why);
  absl::StatusOr<KvPushResult> PushOverLink(const std::string& target, Link& link,
                                            uint64_t reservation_id, const KvPageExport* pages,
                                            KvSource& source,
                                            std::chrono::steady_clock::time_point deadline);

  WorkerStubs stubs_;
  NcclKvOptions options_;
  KvTransport* fallback_;
  std::function<void(std::string_view)> on_fallback_;
  std::mutex mu_;
  std::map<std::string, std::shared_ptr<Link>> links_;
  std::list<std::string> link_order_;                           // least recently used first
  std::map<std::string, std::shared_ptr<std::mutex>> opening_;  // one opening per target
  std::map<std::string, std::chrono::steady_clock::time_point> refused_until_;
};

// The receiving side: links opened by senders, by id (a bounded number, least recently
// used dropped first), and one waiting thread per posted receive.
class NcclKvLinkReceiver final : public KvLinkReceiver {
 public:
  // Links unused for `idle_close` (no receive running) close, as on the sender's side:
  // one whose sender died gives its device memory back.
  explicit NcclKvLinkReceiver(int device, size_t max_links = 16,
                              std::chrono::milliseconds idle_close = std::chrono::minutes(10))
      : device_(device), max_links_(max_links), idle_close_(idle_close) {}
  ~NcclKvLinkReceiver() override;
  absl::StatusOr<int64_t> Open(uint64_t link_id, std::string_view unique_id,
                               std::chrono::steady_clock::time_point deadline) override;
  absl::Status PostReceive(uint64_t link_id, std::vector<KvByteRange> ranges,
                           std::chrono::steady_clock::time_point deadline,
                           std::function<void(absl::Status)> done) override;
  void Close(uint64_t link_id) override;

 private:
  struct Waiter {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> finished;
    std::shared_ptr<nccl::NcclLink> link;  // aborted at shutdown, even if closed meanwhile
  };
  void ReapWaiters();
  void CloseIdleLocked(std::chrono::steady_clock::time_point now);

  int device_;
  size_t max_links_;
  std::chrono::milliseconds idle_close_;
  std::map<uint64_t, std::chrono::steady_clock::time_point> last_used_;
  std::mutex mu_;
  std::map<uint64_t, std::shared_ptr<nccl::NcclLink>> links_;
  std::list<uint64_t> link_order_;
  std::set<uint64_t> receiving_;  // links with a receive running
  std::vector<Waiter> waiters_;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SERVICE_NCCL_KV_TRANSPORT_H_
