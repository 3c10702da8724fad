// The worker's gRPC adapter (the only worker code that includes grpcpp besides the KV
// transport): lserve.v1.Generation and lserve.v1.Worker over the callback API, on top of
// WorkerHandler; plus the server with health checking and reflection.
#ifndef LSERVE_WORKER_SERVICE_WORKER_SERVICE_H_
#define LSERVE_WORKER_SERVICE_WORKER_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "lserve/v1/generation.grpc.pb.h"
#include "lserve/v1/worker.grpc.pb.h"
#include "net/server.h"
#include "worker/service/worker_handler.h"

namespace lserve {

class GenerationService final : public v1::Generation::CallbackService {
 public:
  explicit GenerationService(WorkerHandler* handler) : handler_(handler) {}
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
  WorkerHandler* handler_;
};

class WorkerApiService final : public v1::Worker::CallbackService {
 public:
  explicit WorkerApiService(WorkerHandler* handler) : handler_(handler) {}
  grpc::ServerUnaryReactor* ReserveKv(grpc::CallbackServerContext* context,
                                      const v1::ReserveKvRequest* request,
                                      v1::ReserveKvResponse* response) override;
  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* context,
                                    const v1::PrefillRequest* request,
                                    v1::PrefillResponse* response) override;
  grpc::ServerReadReactor<v1::KvChunk>* PushKv(grpc::CallbackServerContext* context,
                                               v1::PushKvResponse* response) override;
  grpc::ServerUnaryReactor* TransferKv(grpc::CallbackServerContext* context,
                                       const v1::TransferKvRequest* request,
                                       v1::TransferKvResponse* response) override;
  grpc::ServerUnaryReactor* OpenKvLink(grpc::CallbackServerContext* context,
                                       const v1::OpenKvLinkRequest* request,
                                       v1::OpenKvLinkResponse* response) override;
  grpc::ServerUnaryReactor* PostKvReceive(grpc::CallbackServerContext* context,
                                          const v1::PostKvReceiveRequest* request,
                                          v1::PostKvReceiveResponse* response) override;
  grpc::ServerUnaryReactor* FinishKvReceive(grpc::CallbackServerContext* context,
                                            const v1::FinishKvReceiveRequest* request,
                                            v1::PushKvResponse* response) override;
  grpc::ServerUnaryReactor* CloseKvLink(grpc::CallbackServerContext* context,
                                        const v1::CloseKvLinkRequest* request,
                                        v1::CloseKvLinkResponse* response) override;
  grpc::ServerUnaryReactor* ReleaseKv(grpc::CallbackServerContext* context,
                                      const v1::ReleaseKvRequest* request,
                                      v1::ReleaseKvResponse* response) override;
  grpc::ServerWriteReactor<v1::GenerateResponse>* Decode(grpc::CallbackServerContext* context,
                                                         const v1::DecodeRequest* request) override;
  grpc::ServerUnaryReactor* Drain(grpc::CallbackServerContext* context,
                                  const v1::DrainRequest* request,
                                  v1::DrainResponse* response) override;

 private:
  WorkerHandler* handler_;
};

// Both services with grpc.health.v1 and server reflection.
class WorkerServer {
 public:
  static absl::StatusOr<std::unique_ptr<WorkerServer>> Start(WorkerHandler* handler,
                                                             const net::ServerOptions& options);
  int port() const { return port_; }
  // Health answers NOT_SERVING from now on (draining).
  void SetServing(bool serving);
  void Shutdown(std::chrono::system_clock::time_point deadline);
  void Wait() { server_->Wait(); }

 private:
  WorkerServer(WorkerHandler* handler) : generation_(handler), worker_(handler) {}

  GenerationService generation_;
  WorkerApiService worker_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SERVICE_WORKER_SERVICE_H_
