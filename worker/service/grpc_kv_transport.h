// KvTransport over gRPC: the KV goes to the decode worker's Worker.PushKv as one header
// and data chunks (flow control comes with the stream), with a checksum the receiver
// verifies.
#ifndef LSERVE_WORKER_SERVICE_GRPC_KV_TRANSPORT_H_
#define LSERVE_WORKER_SERVICE_GRPC_KV_TRANSPORT_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "worker/service/kv_transport.h"
#include "worker/service/worker_stubs.h"

namespace lserve {

class GrpcKvTransport final : public KvTransport {
 public:
  GrpcKvTransport(std::shared_ptr<grpc::ChannelCredentials> credentials, int max_message_bytes,
                  size_t chunk_bytes = size_t{1} << 20);
  std::string_view name() const override { return "grpc"; }
  absl::StatusOr<KvPushResult> Push(const std::string& target, uint64_t reservation_id,
                                    KvSource& source,
                                    std::chrono::steady_clock::time_point deadline) override;

 private:
  WorkerStubs stubs_;
  size_t chunk_bytes_;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SERVICE_GRPC_KV_TRANSPORT_H_
