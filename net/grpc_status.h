// absl::Status <-> grpc::Status, for the service adapters (the only code that includes
// grpcpp). Codes map one to one; messages are kept.
#ifndef LSERVE_NET_GRPC_STATUS_H_
#define LSERVE_NET_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include <string>

#include "absl/status/status.h"

namespace lserve::net {

inline grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

inline absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

}  // namespace lserve::net

#endif  // LSERVE_NET_GRPC_STATUS_H_
