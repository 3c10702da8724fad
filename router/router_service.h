// The router's gRPC adapter: the public lserve.v1.Generation API (API keys checked on
// every call) and lserve.v1.Router (worker registration), over the callback API on top of
// RouterHandler; the server with health (SERVING while a decode-capable worker is up) and
// reflection. Each Generate runs on its own thread, which blocks on the worker streams.
#ifndef LSERVE_ROUTER_ROUTER_SERVICE_H_
#define LSERVE_ROUTER_ROUTER_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "lserve/v1/generation.grpc.pb.h"
#include "lserve/v1/worker.grpc.pb.h"
#include "net/server.h"
#include "router/api_keys.h"
#include "router/router_handler.h"
#include "router/worker_registry.h"

namespace lserve {

// Counts the request threads, so that shutdown can wait for them.
class RequestThreads {
 public:
  void Enter();
  void Leave();
  // True when none is left by `deadline`.
  bool WaitIdle(std::chrono::steady_clock::time_point deadline);
  int live() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable idle_;
  int live_ = 0;
};

class RouterGenerationService final : public v1::Generation::CallbackService {
 public:
  RouterGenerationService(RouterHandler* handler, const ApiKeys* keys, RequestThreads* threads)
      : handler_(handler), keys_(keys), threads_(threads) {}
  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context,
                                  const v1::AbortRequest* request,
                                  v1::AbortResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::ModelInfoRequest* request,
                                         v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* GetLoad(grpc::CallbackServerContext* context,
                                    const v1::LoadRequest* request, v1::Load* response) override;

 private:
  absl::Status Authenticate(const grpc::CallbackServerContext* context) const;

  RouterHandler* handler_;
  const ApiKeys* keys_;
  RequestThreads* threads_;
};

class RouterRegistrationService final : public v1::Router::CallbackService {
 public:
  RouterRegistrationService(WorkerRegistry* registry, const ApiKeys* keys,
                            std::chrono::milliseconds heartbeat_interval)
      : registry_(registry), keys_(keys), heartbeat_interval_(heartbeat_interval) {}
  grpc::ServerUnaryReactor* Register(grpc::CallbackServerContext* context,
                                     const v1::RegisterRequest* request,
                                     v1::RegisterResponse* response) override;

 private:
  WorkerRegistry* registry_;
  const ApiKeys* keys_;
  std::chrono::milliseconds heartbeat_interval_;
};

class RouterServer {
 public:
  // handler, registry and keys must outlive the server.
  // Workers are asked to heartbeat every `heartbeat_interval`.
  static absl::StatusOr<std::unique_ptr<RouterServer>> Start(
      RouterHandler* handler, WorkerRegistry* registry, const ApiKeys* keys,
      const net::ServerOptions& options, std::chrono::milliseconds heartbeat_interval);
  ~RouterServer();
  int port() const { return port_; }
  void SetServing(bool serving);
  // Stops taking requests; running streams get until `deadline`, then are cancelled.
  void Shutdown(std::chrono::system_clock::time_point deadline);
  RequestThreads& threads() { return threads_; }

 private:
  RouterServer(RouterHandler* handler, WorkerRegistry* registry, const ApiKeys* keys,
               std::chrono::milliseconds heartbeat_interval)
      : generation_(handler, keys, &threads_), registration_(registry, keys, heartbeat_interval) {}

  RequestThreads threads_;
  RouterGenerationService generation_;
  RouterRegistrationService registration_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace lserve

#endif  // LSERVE_ROUTER_ROUTER_SERVICE_H_
