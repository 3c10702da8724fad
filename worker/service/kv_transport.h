// How a prefill worker moves a leased sequence's KV into a reservation on a decode
// worker. No transport types here: the gRPC byte stream implements it now, NCCL can
// implement it for GPU peers.
#ifndef LSERVE_WORKER_SERVICE_KV_TRANSPORT_H_
#define LSERVE_WORKER_SERVICE_KV_TRANSPORT_H_

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "kvstore/kv_snapshot.h"

namespace lserve {

class KvTransport {
 public:
  virtual ~KvTransport() = default;
  virtual std::string_view name() const = 0;
  // Delivers `snapshot` into reservation `reservation_id` of the worker at `target`;
  // returns the bytes moved. Fails whole: on any error the receiver keeps nothing.
  virtual absl::StatusOr<int64_t> Push(const std::string& target, uint64_t reservation_id,
                                       const KvSnapshot& snapshot,
                                       std::chrono::steady_clock::time_point deadline) = 0;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SERVICE_KV_TRANSPORT_H_
