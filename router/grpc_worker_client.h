// WorkerClient over gRPC, one channel per worker, with TLS or mTLS from the router's
// worker_tls settings.
#ifndef LSERVE_ROUTER_GRPC_WORKER_CLIENT_H_
#define LSERVE_ROUTER_GRPC_WORKER_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "router/worker_client.h"

namespace lserve {

class GrpcWorkerClientFactory final : public WorkerClientFactory {
 public:
  GrpcWorkerClientFactory(std::shared_ptr<grpc::ChannelCredentials> credentials,
                          int max_message_bytes)
      : credentials_(std::move(credentials)), max_message_bytes_(max_message_bytes) {}
  std::shared_ptr<WorkerClient> Connect(const std::string& address) override;

 private:
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
  int max_message_bytes_;
};

}  // namespace lserve

#endif  // LSERVE_ROUTER_GRPC_WORKER_CLIENT_H_
