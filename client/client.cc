#include "client/client.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "net/grpc_status.h"

namespace lserve {
namespace {

// A server that is full says when to come back (the "grpc-retry-pushback-ms" trailer):
// the status carries it in its message and as the payload kRetryPushbackPayload.
absl::Status WithRetryHint(absl::Status status, const grpc::ClientContext& context) {
  if (status.code() != absl::StatusCode::kResourceExhausted) return status;
  const auto& trailers = context.GetServerTrailingMetadata();
  auto it = trailers.find("grpc-retry-pushback-ms");
  if (it == trailers.end()) return status;
  const std::string ms(it->second.data(), it->second.size());
  absl::Status hinted(status.code(), absl::StrCat(status.message(), " (retry after ", ms, " ms)"));
  hinted.SetPayload(kRetryPushbackPayload, absl::Cord(ms));
  return hinted;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const ClientOptions& options) {
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> credentials =
      net::ChannelCredentials(options.tls);
  if (!credentials.ok()) return credentials.status();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  if (!options.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name);
  }
  std::unique_ptr<Client> client(new Client());
  client->options_ = options;
  client->channel_ = grpc::CreateCustomChannel(options.target, *credentials, args);
  client->stub_ = v1::Generation::NewStub(client->channel_);
  return client;
}

void Client::Prepare(grpc::ClientContext* context, std::chrono::milliseconds timeout) const {
  if (!options_.api_key.empty()) {
    context->AddMetadata("authorization", "Bearer " + options_.api_key);
  }
  if (timeout.count() > 0) context->set_deadline(std::chrono::system_clock::now() + timeout);
}

absl::StatusOr<GenerateResult> Client::Generate(
    const v1::GenerateRequest& request,
    const std::function<void(const v1::GenerateResponse&)>& on_tokens,
    std::chrono::milliseconds timeout) {
  grpc::ClientContext context;
  Prepare(&context, timeout);
  std::unique_ptr<grpc::ClientReader<v1::GenerateResponse>> reader =
      stub_->Generate(&context, request);
  GenerateResult result;
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    if (on_tokens) on_tokens(response);
    for (const v1::GeneratedToken& token : response.tokens()) result.tokens.push_back(token);
    if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
      result.finish_reason = response.finish_reason();
      result.timings = response.timings();
    }
  }
  const grpc::Status status = reader->Finish();
  if (!status.ok()) return WithRetryHint(net::FromGrpcStatus(status), context);
  return result;
}

absl::Status Client::Abort(const std::string& request_id) {
  grpc::ClientContext context;
  Prepare(&context, std::chrono::seconds(10));
  v1::AbortRequest request;
  request.set_request_id(request_id);
  v1::AbortResponse response;
  return net::FromGrpcStatus(stub_->Abort(&context, request, &response));
}

absl::StatusOr<v1::ModelInfo> Client::ModelInfo() {
  grpc::ClientContext context;
  Prepare(&context, std::chrono::seconds(10));
  v1::ModelInfo info;
  const grpc::Status status = stub_->GetModelInfo(&context, v1::ModelInfoRequest(), &info);
  if (!status.ok()) return net::FromGrpcStatus(status);
  return info;
}

absl::StatusOr<v1::Load> Client::Load() {
  grpc::ClientContext context;
  Prepare(&context, std::chrono::seconds(10));
  v1::Load load;
  const grpc::Status status = stub_->GetLoad(&context, v1::LoadRequest(), &load);
  if (!status.ok()) return net::FromGrpcStatus(status);
  return load;
}

absl::Status Client::WaitServing(std::chrono::milliseconds timeout) {
  auto health = grpc::health::v1::Health::NewStub(channel_);
  const auto give_up = std::chrono::steady_clock::now() + timeout;
  absl::Status last = absl::DeadlineExceededError("not serving");
  do {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    const grpc::Status status = health->Check(&context, request, &response);
    if (status.ok() && response.status() == grpc::health::v1::HealthCheckResponse::SERVING) {
      return absl::OkStatus();
    }
    last = status.ok() ? absl::UnavailableError(absl::StrCat(options_.target, " is not serving"))
                       : net::FromGrpcStatus(status);
    if (std::chrono::steady_clock::now() >= give_up) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  } while (true);
  return last;
}

}  // namespace lserve
