// Keeps a worker registered with a router: Register at start and again as a heartbeat at
// the interval the router asks for, until stopped. A router that is down is retried. A
// router with API keys accepts a worker that presents a client certificate (mTLS) or a key.
#ifndef LSERVE_WORKER_SERVICE_ROUTER_REGISTRATION_H_
#define LSERVE_WORKER_SERVICE_ROUTER_REGISTRATION_H_

#include <grpcpp/grpcpp.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "lserve/v1/worker.grpc.pb.h"

namespace lserve {

class RouterRegistration {
 public:
  RouterRegistration(const std::string& router_address,
                     std::shared_ptr<grpc::ChannelCredentials> credentials,
                     v1::RegisterRequest announcement, std::string api_key = "");
  ~RouterRegistration();  // stops heartbeating (the router drops the worker on timeout)

 private:
  void Loop();

  std::unique_ptr<v1::Router::Stub> stub_;
  v1::RegisterRequest announcement_;
  std::string api_key_;  // sent as a bearer token when the router wants API keys
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SERVICE_ROUTER_REGISTRATION_H_
