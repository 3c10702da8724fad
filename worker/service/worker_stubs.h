// Channels to other workers' lserve.v1.Worker API, one per address, made on first use
// with the peer credentials and message size limit; shared by the KV transports.
#ifndef LSERVE_WORKER_SERVICE_WORKER_STUBS_H_
#define LSERVE_WORKER_SERVICE_WORKER_STUBS_H_

#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "lserve/v1/worker.grpc.pb.h"

namespace lserve {

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
