#include "router/router_service.h"

#include <thread>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "net/generate_stream_reactor.h"
#include "net/grpc_status.h"

namespace lserve {
namespace {

using net::ToGrpcStatus;

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

std::string_view Authorization(const grpc::CallbackServerContext* context) {
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return {};
  return std::string_view(it->second.data(), it->second.size());
}

// The call's deadline, shortened by the request's own timeout_ms when set.
Deadline DeadlineOf(const grpc::CallbackServerContext* context, uint64_t timeout_ms) {
  Deadline deadline = context->deadline();
  if (timeout_ms > 0) {
    deadline = std::min(deadline,
                        std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
  }
  return deadline;
}

}  // namespace

void RequestThreads::Enter() {
  std::lock_guard<std::mutex> lock(mu_);
  ++live_;
}

void RequestThreads::Leave() {
  std::lock_guard<std::mutex> lock(mu_);
  if (--live_ == 0) idle_.notify_all();
}

bool RequestThreads::WaitIdle(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_.wait_until(lock, deadline, [this] { return live_ == 0; });
}

int RequestThreads::live() const {
  std::lock_guard<std::mutex> lock(mu_);
  return live_;
}

absl::Status RouterGenerationService::Authenticate(
    const grpc::CallbackServerContext* context) const {
  if (!keys_->enabled()) return absl::OkStatus();
  return keys_->Check(Authorization(context));
}

grpc::ServerWriteReactor<v1::GenerateResponse>* RouterGenerationService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return new net::GenerateStreamReactor(
      [&](net::GenerateSink sink) -> absl::StatusOr<std::function<void()>> {
        if (absl::Status status = Authenticate(context); !status.ok()) return status;
        auto cancel = std::make_shared<Cancellation>();
        const Deadline deadline = DeadlineOf(context, request->timeout_ms());
        threads_->Enter();
        std::thread([handler = handler_, threads = threads_, request = *request, deadline,
                     sink = std::move(sink), cancel] {
          handler->Generate(request, deadline, sink, cancel.get());
          threads->Leave();
        }).detach();
        return [cancel] { cancel->Cancel(); };
      },
      context);
}

grpc::ServerUnaryReactor* RouterGenerationService::Abort(grpc::CallbackServerContext* context,
                                                         const v1::AbortRequest* request,
                                                         v1::AbortResponse*) {
  if (absl::Status status = Authenticate(context); !status.ok()) return Done(context, status);
  return Done(context, handler_->Abort(request->request_id()));
}

grpc::ServerUnaryReactor* RouterGenerationService::GetModelInfo(
    grpc::CallbackServerContext* context, const v1::ModelInfoRequest*, v1::ModelInfo* response) {
  if (absl::Status status = Authenticate(context); !status.ok()) return Done(context, status);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  // Asks a worker: off the callback threads.
  threads_->Enter();
  std::thread([this, reactor, response] {
    absl::StatusOr<v1::ModelInfo> info = handler_->ModelInfo();
    if (info.ok()) *response = *std::move(info);
    reactor->Finish(ToGrpcStatus(info.status()));
    threads_->Leave();
  }).detach();
  return reactor;
}

grpc::ServerUnaryReactor* RouterGenerationService::GetLoad(grpc::CallbackServerContext* context,
                                                           const v1::LoadRequest*,
                                                           v1::Load* response) {
  if (absl::Status status = Authenticate(context); !status.ok()) return Done(context, status);
  *response = handler_->Load();
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* RouterRegistrationService::Register(grpc::CallbackServerContext* context,
                                                              const v1::RegisterRequest* request,
                                                              v1::RegisterResponse* response) {
  // With API keys on, a worker proves itself with a client certificate (mTLS) or a key.
  if (keys_->enabled() && !context->auth_context()->IsPeerAuthenticated()) {
    if (absl::Status status = keys_->Check(Authorization(context)); !status.ok()) {
      return Done(context, status);
    }
  }
  if (request->role() == v1::WORKER_ROLE_UNSPECIFIED) {
    return Done(context, absl::InvalidArgumentError("a worker registers with its role"));
  }
  response->set_heartbeat_interval_ms(heartbeat_interval_.count());
  return Done(context, registry_->Register(request->address(), request->role()));
}

absl::StatusOr<std::unique_ptr<RouterServer>> RouterServer::Start(
    RouterHandler* handler, WorkerRegistry* registry, const ApiKeys* keys,
    const net::ServerOptions& options, std::chrono::milliseconds heartbeat_interval) {
  std::unique_ptr<RouterServer> server(
      new RouterServer(handler, registry, keys, heartbeat_interval));
  auto started = net::StartServer(options, {&server->generation_, &server->registration_});
  if (!started.ok()) return started.status();
  std::tie(server->server_, server->port_) = *std::move(started);
  server->SetServing(false);
  return server;
}

RouterServer::~RouterServer() {
  if (server_ != nullptr) Shutdown(std::chrono::system_clock::now());
}

void RouterServer::SetServing(bool serving) {
  net::SetServing(*server_, serving, {v1::Generation::service_full_name()});
  // Registration is served whether or not workers are up.
  net::SetServing(*server_, true, {v1::Router::service_full_name()});
}

void RouterServer::Shutdown(std::chrono::system_clock::time_point deadline) {
  if (server_ == nullptr) return;
  server_->Shutdown(deadline);
  // Cancelled streams end their threads promptly; they still hold the handler.
  threads_.WaitIdle(std::chrono::steady_clock::now() + std::chrono::seconds(10));
  server_.reset();
}

}  // namespace lserve
