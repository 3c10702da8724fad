#include "worker/service/worker_service.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <deque>
#include <mutex>
#include <thread>

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

// A server stream of GenerateResponse fed by the engine thread. Writes go out one at a
// time; responses queued meanwhile are merged, so a slow client costs one message per
// write rather than one per token. The reactor deletes itself in OnDone; the sink only
// touches the Shared part, which outlives it.
class StreamReactor : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  using Starter = std::function<absl::StatusOr<RequestId>(ResponseSink)>;

  StreamReactor(WorkerHandler* handler, const Starter& start)
      : handler_(handler), shared_(std::make_shared<Shared>()) {
    shared_->reactor = this;
    std::weak_ptr<Shared> weak = shared_;
    absl::StatusOr<RequestId> id =
        start([weak](const v1::GenerateResponse& response, bool final, const absl::Status& status) {
          if (auto shared = weak.lock()) Push(*shared, response, final, status);
        });
    std::lock_guard<std::mutex> lock(shared_->mu);
    if (!id.ok()) {
      shared_->finishing = true;
      Finish(ToGrpcStatus(id.status()));
      return;
    }
    id_ = *id;
    started_ = true;
    if (cancelled_) handler_->Cancel(id_);
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(shared_->mu);
    shared_->writing = false;
    if (!ok) {
      // The client is gone; OnCancel stops the request. Drop what is queued.
      shared_->queue.clear();
      if (!shared_->finishing) {
        shared_->finishing = true;
        lock.unlock();
        Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      }
      return;
    }
    WriteNext(*shared_, lock);
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(shared_->mu);
    cancelled_ = true;
    if (started_) handler_->Cancel(id_);
  }

  void OnDone() override {
    {
      std::lock_guard<std::mutex> lock(shared_->mu);
      shared_->reactor = nullptr;
    }
    delete this;
  }

 private:
  struct Shared {
    std::mutex mu;
    StreamReactor* reactor = nullptr;
    std::deque<v1::GenerateResponse> queue;
    v1::GenerateResponse writing_now;
    bool writing = false;
    bool final = false;
    bool finishing = false;
    grpc::Status status;
  };

  static void Push(Shared& shared, const v1::GenerateResponse& response, bool final,
                   const absl::Status& status) {
    std::unique_lock<std::mutex> lock(shared.mu);
    if (shared.reactor == nullptr || shared.finishing) return;
    if (!shared.queue.empty() && shared.queue.back().finish_reason() == 0 &&
        !shared.queue.back().has_timings()) {
      // Merge into the response still waiting to be written.
      shared.queue.back().mutable_tokens()->MergeFrom(response.tokens());
      shared.queue.back().set_finish_reason(response.finish_reason());
      if (response.has_timings()) *shared.queue.back().mutable_timings() = response.timings();
    } else if (response.tokens_size() > 0 || (final && status.ok())) {
      shared.queue.push_back(response);
    }
    if (final) {
      shared.final = true;
      shared.status = ToGrpcStatus(status);
    }
    if (!shared.writing) WriteNext(shared, lock);
  }

  // Called with the lock held; releases it before calling into gRPC.
  static void WriteNext(Shared& shared, std::unique_lock<std::mutex>& lock) {
    StreamReactor* reactor = shared.reactor;
    if (reactor == nullptr || shared.finishing) return;
    if (!shared.queue.empty()) {
      shared.writing_now = std::move(shared.queue.front());
      shared.queue.pop_front();
      shared.writing = true;
      lock.unlock();
      reactor->StartWrite(&shared.writing_now);
      return;
    }
    if (shared.final) {
      shared.finishing = true;
      const grpc::Status status = shared.status;
      lock.unlock();
      reactor->Finish(status);
    }
  }

  WorkerHandler* handler_;
  std::shared_ptr<Shared> shared_;
  RequestId id_ = -1;
  bool started_ = false;
  bool cancelled_ = false;
};

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

}  // namespace

grpc::ServerWriteReactor<v1::GenerateResponse>* GenerationService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return new StreamReactor(handler_, [&](ResponseSink sink) {
    return handler_->StartGenerate(*request, DeadlineOf(context), std::move(sink));
  });
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
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const absl::Status started = handler_->StartPrefill(
      *request, DeadlineOf(context), [reactor, response](absl::StatusOr<v1::PrefillResponse> r) {
        if (r.ok()) *response = *std::move(r);
        reactor->Finish(ToGrpcStatus(r.status()));
      });
  if (!started.ok()) reactor->Finish(ToGrpcStatus(started));
  return reactor;
}

grpc::ServerReadReactor<v1::KvChunk>* WorkerApiService::PushKv(grpc::CallbackServerContext*,
                                                               v1::PushKvResponse* response) {
  return new PushKvReactor(handler_, response);
}

grpc::ServerUnaryReactor* WorkerApiService::TransferKv(grpc::CallbackServerContext* context,
                                                       const v1::TransferKvRequest* request,
                                                       v1::TransferKvResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const SteadyClock::time_point deadline =
      DeadlineOf(context).value_or(SteadyClock::now() + std::chrono::minutes(5));
  // The push blocks for the whole transfer: keep it off the gRPC callback threads.
  std::thread([this, reactor, request, response, deadline] {
    absl::StatusOr<v1::TransferKvResponse> result = handler_->TransferKv(*request, deadline);
    if (result.ok()) *response = *result;
    reactor->Finish(ToGrpcStatus(result.status()));
  }).detach();
  return reactor;
}

grpc::ServerUnaryReactor* WorkerApiService::ReleaseKv(grpc::CallbackServerContext* context,
                                                      const v1::ReleaseKvRequest* request,
                                                      v1::ReleaseKvResponse*) {
  return Done(context, handler_->ReleaseKv(*request));
}

grpc::ServerWriteReactor<v1::GenerateResponse>* WorkerApiService::Decode(
    grpc::CallbackServerContext* context, const v1::DecodeRequest* request) {
  return new StreamReactor(handler_, [&](ResponseSink sink) {
    return handler_->StartDecode(*request, DeadlineOf(context), std::move(sink));
  });
}

grpc::ServerUnaryReactor* WorkerApiService::Drain(grpc::CallbackServerContext* context,
                                                  const v1::DrainRequest*,
                                                  v1::DrainResponse* response) {
  *response = handler_->Drain();
  return Done(context, absl::OkStatus());
}

absl::StatusOr<std::unique_ptr<WorkerServer>> WorkerServer::Start(WorkerHandler* handler,
                                                                  const ServerOptions& options) {
  std::unique_ptr<WorkerServer> server(new WorkerServer(handler));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen_address, options.credentials, &server->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(&server->generation_);
  builder.RegisterService(&server->worker_);
  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || server->port_ == 0) {
    return absl::UnavailableError("cannot listen on " + options.listen_address);
  }
  server->SetServing(true);
  return server;
}

void WorkerServer::SetServing(bool serving) {
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus(serving);
  health->SetServingStatus(v1::Generation::service_full_name(), serving);
  health->SetServingStatus(v1::Worker::service_full_name(), serving);
}

void WorkerServer::Shutdown(std::chrono::system_clock::time_point deadline) {
  server_->Shutdown(deadline);
}

}  // namespace lserve
