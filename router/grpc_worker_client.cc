#include "router/grpc_worker_client.h"

#include "grpc/health/v1/health.grpc.pb.h"
#include "lserve/v1/generation.grpc.pb.h"
#include "lserve/v1/worker.grpc.pb.h"
#include "net/grpc_status.h"

namespace lserve {
namespace {

using net::FromGrpcStatus;

class GrpcWorkerClient final : public WorkerClient {
 public:
  GrpcWorkerClient(std::string address, std::shared_ptr<grpc::Channel> channel)
      : address_(std::move(address)),
        generation_(v1::Generation::NewStub(channel)),
        worker_(v1::Worker::NewStub(channel)),
        health_(grpc::health::v1::Health::NewStub(channel)) {}

  const std::string& address() const override { return address_; }

  absl::Status Generate(const v1::GenerateRequest& request, Deadline deadline,
                        const StreamCallback& on_response, Cancellation* cancel) override {
    grpc::ClientContext context;
    context.set_deadline(deadline);
    cancel->SetHook([&context] { context.TryCancel(); });
    auto reader = generation_->Generate(&context, request);
    return Drain(reader.get(), on_response, cancel);
  }

  absl::Status Decode(const v1::DecodeRequest& request, Deadline deadline,
                      const StreamCallback& on_response, Cancellation* cancel) override {
    grpc::ClientContext context;
    context.set_deadline(deadline);
    cancel->SetHook([&context] { context.TryCancel(); });
    auto reader = worker_->Decode(&context, request);
    return Drain(reader.get(), on_response, cancel);
  }

  absl::StatusOr<v1::ReserveKvResponse> ReserveKv(const v1::ReserveKvRequest& request,
                                                  Deadline deadline) override {
    grpc::ClientContext context;
    context.set_deadline(deadline);
    v1::ReserveKvResponse response;
    const grpc::Status status = worker_->ReserveKv(&context, request, &response);
    if (!status.ok()) return FromGrpcStatus(status);
    return response;
  }

  absl::StatusOr<v1::PrefillResponse> Prefill(const v1::PrefillRequest& request, Deadline deadline,
                                              Cancellation* cancel) override {
    grpc::ClientContext context;
    context.set_deadline(deadline);
    cancel->SetHook([&context] { context.TryCancel(); });
    v1::PrefillResponse response;
    const grpc::Status status = worker_->Prefill(&context, request, &response);
    cancel->Clear();
    if (!status.ok()) return FromGrpcStatus(status);
    return response;
  }

  absl::StatusOr<v1::TransferKvResponse> TransferKv(const v1::TransferKvRequest& request,
                                                    Deadline deadline,
                                                    Cancellation* cancel) override {
    grpc::ClientContext context;
    context.set_deadline(deadline);
    cancel->SetHook([&context] { context.TryCancel(); });
    v1::TransferKvResponse response;
    const grpc::Status status = worker_->TransferKv(&context, request, &response);
    cancel->Clear();
    if (!status.ok()) return FromGrpcStatus(status);
    return response;
  }

  absl::Status ReleaseKv(const v1::ReleaseKvRequest& request, Deadline deadline) override {
    grpc::ClientContext context;
    context.set_deadline(deadline);
    v1::ReleaseKvResponse response;
    return FromGrpcStatus(worker_->ReleaseKv(&context, request, &response));
  }

  absl::StatusOr<v1::Load> GetLoad(Deadline deadline) override {
    grpc::ClientContext context;
    context.set_deadline(deadline);
    v1::Load load;
    const grpc::Status status = generation_->GetLoad(&context, v1::LoadRequest(), &load);
    if (!status.ok()) return FromGrpcStatus(status);
    return load;
  }

  absl::StatusOr<v1::ModelInfo> GetModelInfo(Deadline deadline) override {
    grpc::ClientContext context;
    context.set_deadline(deadline);
    v1::ModelInfo info;
    const grpc::Status status = generation_->GetModelInfo(&context, v1::ModelInfoRequest(), &info);
    if (!status.ok()) return FromGrpcStatus(status);
    return info;
  }

  absl::StatusOr<bool> Healthy(Deadline deadline) override {
    grpc::ClientContext context;
    context.set_deadline(deadline);
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status = health_->Check(&context, request, &response);
    if (!status.ok()) return FromGrpcStatus(status);
    return response.status() == grpc::health::v1::HealthCheckResponse::SERVING;
  }

 private:
  static absl::Status Drain(grpc::ClientReader<v1::GenerateResponse>* reader,
                            const StreamCallback& on_response, Cancellation* cancel) {
    v1::GenerateResponse response;
    while (reader->Read(&response)) on_response(response);
    const grpc::Status status = reader->Finish();
    cancel->Clear();
    return FromGrpcStatus(status);
  }

  std::string address_;
  std::unique_ptr<v1::Generation::Stub> generation_;
  std::unique_ptr<v1::Worker::Stub> worker_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
};

}  // namespace

std::shared_ptr<WorkerClient> GrpcWorkerClientFactory::Connect(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(max_message_bytes_);
  args.SetMaxSendMessageSize(max_message_bytes_);
  // Fail fast towards a dead worker rather than waiting for it to come back.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  return std::make_shared<GrpcWorkerClient>(address,
                                            grpc::CreateCustomChannel(address, credentials_, args));
}

}  // namespace lserve
