// Hand-offs sent while their prefill still computes (DESIGN.md §1). A prefill request
// that names its decode worker and reservation gets a KvStreamOut: the step computing
// its last chunk starts the transfer on a thread of its own, which sends each layer's
// pages as soon as the step has written them; TransferKv then collects the outcome
// instead of sending again (and sends anew when the early push failed).
#ifndef LSERVE_WORKER_SERVICE_EARLY_KV_PUSH_H_
#define LSERVE_WORKER_SERVICE_EARLY_KV_PUSH_H_

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/scheduler/kv_stream_out.h"
#include "worker/service/engine_loop.h"
#include "worker/service/kv_transport.h"

namespace lserve {

class EarlyKvPushes {
 public:
  // `loop` and `transport` must outlive this.
  EarlyKvPushes(EngineLoop* loop, KvTransport* transport) : loop_(loop), transport_(transport) {}
  ~EarlyKvPushes();  // waits for the pushes still running
  EarlyKvPushes(const EarlyKvPushes&) = delete;
  EarlyKvPushes& operator=(const EarlyKvPushes&) = delete;

  // The hook of a prefill request handing off into `reservation_id` on `target`.
  std::shared_ptr<KvStreamOut> NewStream(std::string target, uint64_t reservation_id,
                                         SteadyClock::time_point deadline);
  // The prefill finished with its KV leased under `handle`: the outcome of `stream`'s
  // push is kept for TransferKv.
  void Register(RequestId handle, std::shared_ptr<KvStreamOut> stream);
  // The outcome of the push that `handle`'s prefill started into `reservation_id` on
  // `target`, waiting for it until `deadline`; nullopt when it started none there.
  std::optional<absl::StatusOr<KvPushResult>> Collect(RequestId handle, const std::string& target,
                                                      uint64_t reservation_id,
                                                      SteadyClock::time_point deadline);
  void Forget(RequestId handle);
  int64_t started() const { return started_.load(); }

 private:
  class Stream;
  // Runs `work` on a thread of its own; false when shutting down.
  bool Launch(std::function<void()> work);

  EngineLoop* loop_;
  KvTransport* transport_;
  std::atomic<int64_t> started_{0};
  std::mutex mu_;
  bool closing_ = false;
  struct Registered {
    std::shared_ptr<Stream> stream;
    SteadyClock::time_point since;
  };
  std::unordered_map<RequestId, Registered> by_handle_;
  struct Worker {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> finished;
  };
  std::vector<Worker> workers_;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SERVICE_EARLY_KV_PUSH_H_
