#include "worker/service/worker_service.h"

#include <mutex>
#include <optional>
#include <thread>
#include <tuple>

#include "net/generate_stream_reactor.h"
#include "net/grpc_status.h"

namespace lserve {
namespace {

using net::ToGrpcStatus;

std::optional<SteadyClock::time_point> DeadlineOf(const grpc::CallbackServerContext* context) {
  const auto deadline = context->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return std::nullopt;
  const auto left = deadline - std::chrono::system_clock::now();
  return SteadyClock::now() + std::chrono::duration_cast<SteadyClock::duration>(left);
}

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* context, const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

// Reads KV chunks into a receiver, then hands the sequence to the reservation.
class PushKvReactor : public grpc::ServerReadReactor<v1::KvChunk> {
 public:
  PushKvReactor(WorkerHandler* handler, v1::PushKvResponse* response)
      : handler_(handler), response_(response), receiver_(handler->NewKvReceiver()) {
    StartRead(&chunk_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) {
      absl::StatusOr<v1::PushKvResponse> result = handler_->FinishPush(*receiver_);
      if (result.ok()) *response_ = *result;
      Finish(ToGrpcStatus(result.status()));
      return;
    }
    const absl::Status status = chunk_.has_header() ? receiver_->OnHeader(chunk_.header())
                                                    : receiver_->OnData(chunk_.data());
    if (!status.ok()) {
      Finish(ToGrpcStatus(status));
      return;
    }
    StartRead(&chunk_);
  }
  void OnDone() override { delete this; }

 private:
  WorkerHandler* handler_;
  v1::PushKvResponse* response_;
  std::unique_ptr<KvReceiver> receiver_;
  v1::KvChunk chunk_;
};

// Runs a prefill. A router that goes away (cancel, deadline, crash) cancels a running
// prefill, and drops the lease of one that finished but whose handle never reached it.
class PrefillReactor : public grpc::ServerUnaryReactor {
 public:
  PrefillReactor(WorkerHandler* handler, grpc::CallbackServerContext* context,
                 const v1::PrefillRequest& request, v1::PrefillResponse* response)
      : handler_(handler), context_(context) {
    absl::StatusOr<RequestId> id = handler_->StartPrefill(
        request, DeadlineOf(context), [this, response](absl::StatusOr<v1::PrefillResponse> r) {
          if (r.ok()) {
            std::lock_guard<std::mutex> lock(mu_);
            *response = *r;
            kv_handle_ = r->kv_handle();
          }
          Finish(ToGrpcStatus(r.status()));  // OnDone may run from here on
        });
    if (!id.ok()) {
      Finish(ToGrpcStatus(id.status()));
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    id_ = *id;
    if (cancelled_) handler_->Cancel(id_);
  }
  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    if (id_ >= 0) handler_->Cancel(id_);
  }
  void OnDone() override {
    std::optional<uint64_t> kv_handle;
    {
      std::lock_guard<std::mutex> lock(mu_);
      kv_handle = kv_handle_;
    }
    if (context_->IsCancelled() && kv_handle.has_value()) {
      v1::ReleaseKvRequest release;
      release.set_kv_handle(*kv_handle);
      (void)handler_->ReleaseKv(release);
    }
    delete this;
  }

 private:
  WorkerHandler* handler_;
  grpc::CallbackServerContext* context_;
  std::mutex mu_;
  RequestId id_ = -1;
  bool cancelled_ = false;
  std::optional<uint64_t> kv_handle_;
};

}  // namespace

grpc::ServerWriteReactor<v1::GenerateResponse>* GenerationService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return new net::GenerateStreamReactor(
      [&](net::GenerateSink sink) -> absl::StatusOr<std::function<void()>> {
        absl::StatusOr<RequestId> id =
            handler_->StartGenerate(*request, DeadlineOf(context), std::move(sink));
        if (!id.ok()) return id.status();
        return [handler = handler_, id = *id] { handler->Cancel(id); };
      },
      context);
}

grpc::ServerUnaryReactor* GenerationService::Abort(grpc::CallbackServerContext* context,
                                                   const v1::AbortRequest* request,
                                                   v1::AbortResponse*) {
  return Done(context, handler_->Abort(*request));
}

grpc::ServerUnaryReactor* GenerationService::GetModelInfo(grpc::CallbackServerContext* context,
                                                          const v1::ModelInfoRequest*,
                                                          v1::ModelInfo* response) {
  *response = handler_->ModelInfo();
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* GenerationService::GetLoad(grpc::CallbackServerContext* context,
                                                     const v1::LoadRequest*, v1::Load* response) {
  *response = handler_->Load();
  return Done(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* WorkerApiService::ReserveKv(grpc::CallbackServerContext* context,
                                                      const v1::ReserveKvRequest* request,
                                                      v1::ReserveKvResponse* response) {
  absl::StatusOr<v1::ReserveKvResponse> result = handler_->ReserveKv(*request);
  if (result.ok()) *response = *result;
  return Done(context, result.status());
}

grpc::ServerUnaryReactor* WorkerApiService::Prefill(grpc::CallbackServerContext* context,
                                                    const v1::PrefillRequest* request,
                                                    v1::PrefillResponse* response) {
  return new PrefillReactor(handler_, context, *request, response);
}

grpc::ServerReadReactor<v1::KvChunk>* WorkerApiService::PushKv(grpc::CallbackServerContext*,
                                                               v1::PushKvResponse* response) {
  return new PushKvReactor(handler_, response);
}

// Runs a call that blocks (a transfer, joining a communicator) off the gRPC callback
// threads; `call` returns the response or an error.
template <typename Response, typename Call>
grpc::ServerUnaryReactor* OnOwnThread(grpc::CallbackServerContext* context, Response* response,
                                      Call call) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const SteadyClock::time_point deadline =
      DeadlineOf(context).value_or(SteadyClock::now() + std::chrono::minutes(5));
  std::thread([reactor, response, deadline, call = std::move(call)] {
    absl::StatusOr<Response> result = call(deadline);
    if (result.ok()) *response = *result;
    reactor->Finish(ToGrpcStatus(result.status()));
  }).detach();
  return reactor;
}

grpc::ServerUnaryReactor* WorkerApiService::TransferKv(grpc::CallbackServerContext* context,
                                                       const v1::TransferKvRequest* request,
                                                       v1::TransferKvResponse* response) {
  return OnOwnThread(context, response, [this, request](SteadyClock::time_point deadline) {
    return handler_->TransferKv(*request, deadline);
  });
}

grpc::ServerUnaryReactor* WorkerApiService::OpenKvLink(grpc::CallbackServerContext* context,
                                                       const v1::OpenKvLinkRequest* request,
                                                       v1::OpenKvLinkResponse* response) {
  return OnOwnThread(context, response, [this, request](SteadyClock::time_point deadline) {
    return handler_->OpenKvLink(*request, deadline);
  });
}

grpc::ServerUnaryReactor* WorkerApiService::PostKvReceive(grpc::CallbackServerContext* context,
                                                          const v1::PostKvReceiveRequest* request,
                                                          v1::PostKvReceiveResponse* response) {
  absl::StatusOr<v1::PostKvReceiveResponse> result = handler_->PostKvReceive(*request);
  if (result.ok()) *response = *std::move(result);
  return Done(context, result.status());
}

grpc::ServerUnaryReactor* WorkerApiService::FinishKvReceive(
    grpc::CallbackServerContext* context, const v1::FinishKvReceiveRequest* request,
    v1::PushKvResponse* response) {
  return OnOwnThread(context, response, [this, request](SteadyClock::time_point deadline) {
    return handler_->FinishKvReceive(*request, deadline);
  });
}

grpc::ServerUnaryReactor* WorkerApiService::CloseKvLink(grpc::CallbackServerContext* context,
                                                        const v1::CloseKvLinkRequest* request,
                                                        v1::CloseKvLinkResponse*) {
  return Done(context, handler_->CloseKvLink(*request));
}

grpc::ServerUnaryReactor* WorkerApiService::ReleaseKv(grpc::CallbackServerContext* context,
                                                      const v1::ReleaseKvRequest* request,
                                                      v1::ReleaseKvResponse*) {
  return Done(context, handler_->ReleaseKv(*request));
}

grpc::ServerWriteReactor<v1::GenerateResponse>* WorkerApiService::Decode(
    grpc::CallbackServerContext* context, const v1::DecodeRequest* request) {
  return new net::GenerateStreamReactor(
      [&](net::GenerateSink sink) -> absl::StatusOr<std::function<void()>> {
        absl::StatusOr<RequestId> id =
            handler_->StartDecode(*request, DeadlineOf(context), std::move(sink));
        if (!id.ok()) return id.status();
        return [handler = handler_, id = *id] { handler->Cancel(id); };
      },
      context);
}

grpc::ServerUnaryReactor* WorkerApiService::Drain(grpc::CallbackServerContext* context,
                                                  const v1::DrainRequest*,
                                                  v1::DrainResponse* response) {
  *response = handler_->Drain();
  return Done(context, absl::OkStatus());
}

absl::StatusOr<std::unique_ptr<WorkerServer>> WorkerServer::Start(
    WorkerHandler* handler, const net::ServerOptions& options) {
  std::unique_ptr<WorkerServer> server(new WorkerServer(handler));
  auto started = net::StartServer(options, {&server->generation_, &server->worker_});
  if (!started.ok()) return started.status();
  std::tie(server->server_, server->port_) = *std::move(started);
  server->SetServing(true);
  return server;
}

void WorkerServer::SetServing(bool serving) {
  net::SetServing(*server_, serving,
                  {v1::Generation::service_full_name(), v1::Worker::service_full_name()});
}

void WorkerServer::Shutdown(std::chrono::system_clock::time_point deadline) {
  server_->Shutdown(deadline);
}

}  // namespace lserve
