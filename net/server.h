// Starts a gRPC server the way every lserve server runs: one listening address with its
// credentials, message size limits, grpc.health.v1 and server reflection.
#ifndef LSERVE_NET_SERVER_H_
#define LSERVE_NET_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lserve::net {

struct ServerOptions {
  std::string listen_address;  // host:port (port 0 picks one)
  std::shared_ptr<grpc::ServerCredentials> credentials;
  int max_message_bytes = 64 << 20;
};

// The server and the port it bound; UNAVAILABLE when it cannot listen.
absl::StatusOr<std::pair<std::unique_ptr<grpc::Server>, int>> StartServer(
    const ServerOptions& options, const std::vector<grpc::Service*>& services);

// Sets the health of the whole server and of each named service.
void SetServing(grpc::Server& server, bool serving, const std::vector<std::string>& services);

}  // namespace lserve::net

#endif  // LSERVE_NET_SERVER_H_
