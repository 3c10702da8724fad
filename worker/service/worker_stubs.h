// Channels to other workers' lserve.v1.Worker API, one per address, made on first use
// with the peer credentials and message size limit; and the call helpers the KV
// transports share.
#ifndef LSERVE_WORKER_SERVICE_WORKER_STUBS_H_
#define LSERVE_WORKER_SERVICE_WORKER_STUBS_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "lserve/v1/worker.grpc.pb.h"
#include "net/grpc_status.h"

namespace lserve {

// gRPC takes system-clock deadlines; the workers keep steady-clock ones.
inline void SetDeadline(grpc::ClientContext& context,
                        std::chrono::steady_clock::time_point deadline) {
  context.set_deadline(std::chrono::system_clock::now() +
                       (deadline - std::chrono::steady_clock::now()));
}

// The call's status with `what` in front of its message.
inline absl::Status FromGrpc(const grpc::Status& status, const std::string& what) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(net::FromGrpcStatus(status).code(),
                      absl::StrCat(what, ": ", status.error_message()));
}

class WorkerStubs {
 public:
  WorkerStubs(std::shared_ptr<grpc::ChannelCredentials> credentials, int max_message_bytes)
      : credentials_(std::move(credentials)), max_message_bytes_(max_message_bytes) {}

  // Valid as long as this object.
  v1::Worker::Stub* For(const std::string& target) {
    std::lock_guard<std::mutex> lock(mu_);
    auto& stub = stubs_[target];
    if (stub == nullptr) {
      grpc::ChannelArguments args;
      args.SetMaxSendMessageSize(max_message_bytes_);
      args.SetMaxReceiveMessageSize(max_message_bytes_);
      stub = v1::Worker::NewStub(grpc::CreateCustomChannel(target, credentials_, args));
    }
    return stub.get();
  }

 private:
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
  int max_message_bytes_;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<v1::Worker::Stub>> stubs_;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SERVICE_WORKER_STUBS_H_
