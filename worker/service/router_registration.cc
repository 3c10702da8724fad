#include "worker/service/router_registration.h"

#include "common/logging.h"

namespace lserve {

RouterRegistration::RouterRegistration(const std::string& router_address,
                                       std::shared_ptr<grpc::ChannelCredentials> credentials,
                                       v1::RegisterRequest announcement, std::string api_key)
    : stub_(v1::Router::NewStub(grpc::CreateChannel(router_address, credentials))),
      announcement_(std::move(announcement)),
      api_key_(std::move(api_key)) {
  thread_ = std::thread([this] { Loop(); });
}

RouterRegistration::~RouterRegistration() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

void RouterRegistration::Loop() {
  std::chrono::milliseconds interval(1000);
  bool warned = false;
  while (true) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    if (!api_key_.empty()) context.AddMetadata("authorization", "Bearer " + api_key_);
    v1::RegisterResponse response;
    const grpc::Status status = stub_->Register(&context, announcement_, &response);
    if (status.ok()) {
      if (response.heartbeat_interval_ms() > 0) {
        interval = std::chrono::milliseconds(response.heartbeat_interval_ms());
      }
      warned = false;
    } else if (!warned) {
      LOG(Warning) << "cannot register with the router: " << status.error_message() << "; retrying";
      warned = true;
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (cv_.wait_for(lock, interval, [this] { return stop_; })) return;
  }
}

}  // namespace lserve
