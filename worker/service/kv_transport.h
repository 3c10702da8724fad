// How a prefill worker moves a leased sequence's KV into a reservation on a decode
// worker. No transport types here: the gRPC byte stream implements it, and NCCL does for
// GPU peers, reading and writing the KV pools directly.
#ifndef LSERVE_WORKER_SERVICE_KV_TRANSPORT_H_
#define LSERVE_WORKER_SERVICE_KV_TRANSPORT_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/queue_marks.h"
#include "kvstore/kv_pool.h"
#include "kvstore/kv_snapshot.h"
#include "worker/service/kv_page_runs.h"

namespace lserve {

// A leased sequence's KV on the prefill worker, as a transport reads it.
class KvSource {
 public:
  virtual ~KvSource() = default;
  // The KV copied out of the pools as bytes.
  virtual absl::StatusOr<KvSnapshot> ReadSnapshot() = 0;
  // The pages holding the KV; they stay allocated and unchanged until the source is
  // destroyed.
  virtual absl::StatusOr<KvPageExport> PinPages() = 0;
  virtual const KvPool& dense_pool() const = 0;
  virtual const KvPool& streaming_pool() const = 0;
  // Not null while the pages are still being computed: those of layer l are final once
  // mark l has passed (ReadSnapshot waits for the whole computation).
  virtual QueueMarks* layer_marks() { return nullptr; }
};

struct KvPushResult {
  int64_t bytes = 0;
  std::string transport;  // what moved them: "grpc" or "nccl"
};

class KvTransport {
 public:
  virtual ~KvTransport() = default;
  virtual std::string_view name() const = 0;
  // Whether Push can send a source whose pages are still being computed (layer_marks).
  virtual bool sends_while_computing() const { return false; }
  // Delivers the source's KV into reservation `reservation_id` of the worker at
  // `target`. Fails whole: on any error the receiver keeps nothing.
  virtual absl::StatusOr<KvPushResult> Push(const std::string& target, uint64_t reservation_id,
                                            KvSource& source,
                                            std::chrono::steady_clock::time_point deadline) = 0;
};

// The receiving end of a device transport on a decode worker: links that senders open,
// and receives posted straight into pages claimed for a reservation.
class KvLinkReceiver {
 public:
  virtual ~KvLinkReceiver() = default;
  // Joins the link a sender opened (both sides join at once); returns the device memory
  // the link took.
  virtual absl::StatusOr<int64_t> Open(uint64_t link_id, std::string_view unique_id,
                                       std::chrono::steady_clock::time_point deadline) = 0;
  // Starts receiving `ranges`, in order, on the link and returns at once (the sender
  // sends once it has the answer). `done` runs once, on another thread, when they
  // finish, fail or pass `deadline`; a link that fails closes.
  // NOT_FOUND when the link is unknown (closed, or never opened here).
  virtual absl::Status PostReceive(uint64_t link_id, std::vector<KvByteRange> ranges,
                                   std::chrono::steady_clock::time_point deadline,
                                   std::function<void(absl::Status)> done) = 0;
  // Closes the link; a receive still running on it fails.
  virtual void Close(uint64_t link_id) = 0;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SERVICE_KV_TRANSPORT_H_
