// KvTransport over gRPC: the KV goes to the decode worker's Worker.PushKv as one header
// and data chunks (flow control comes with the stream), with a checksum the receiver
// verifies.
#ifndef LSERVE_WORKER_SERVICE_GRPC_KV_TRANSPORT_H_
#define LSERVE_WORKER_SERVICE_GRPC_KV_TRANSPORT_H_

#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "lserve/v1/worker.grpc.pb.h"
#include "worker/service/kv_transport.h"

namespace lserve {

class GrpcKvTransport final : public KvTransport {
 public:
  GrpcKvTransport(std::shared_ptr<grpc::ChannelCredentials> credentials, int max_message_bytes,
                  size_t chunk_bytes = size_t{1} << 20);
  std::string_view name() const override { return "grpc"; }
  absl::StatusOr<int64_t> Push(const std::string& target, uint64_t reservation_id,
                               const KvSnapshot& snapshot,
                               std::chrono::steady_clock::time_point deadline) override;

 private:
  v1::Worker::Stub* StubFor(const std::string& target);

  std::shared_ptr<grpc::ChannelCredentials> credentials_;
  int max_message_bytes_;
  size_t chunk_bytes_;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<v1::Worker::Stub>> stubs_;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SERVICE_GRPC_KV_TRANSPORT_H_
