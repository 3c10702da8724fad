#include "worker/service/grpc_kv_transport.h"

#include "absl/strings/str_cat.h"
#include "net/grpc_status.h"
#include "worker/service/kv_wire.h"

namespace lserve {

GrpcKvTransport::GrpcKvTransport(std::shared_ptr<grpc::ChannelCredentials> credentials,
                                 int max_message_bytes, size_t chunk_bytes)
    : credentials_(std::move(credentials)),
      max_message_bytes_(max_message_bytes),
      chunk_bytes_(chunk_bytes) {}

v1::Worker::Stub* GrpcKvTransport::StubFor(const std::string& target) {
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

absl::StatusOr<int64_t> GrpcKvTransport::Push(const std::string& target, uint64_t reservation_id,
                                              const KvSnapshot& snapshot,
                                              std::chrono::steady_clock::time_point deadline) {
  grpc::ClientContext context;
  // gRPC takes system-clock deadlines.
  context.set_deadline(std::chrono::system_clock::now() +
                       (deadline - std::chrono::steady_clock::now()));
  v1::PushKvResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::KvChunk>> writer =
      StubFor(target)->PushKv(&context, &response);
  v1::KvChunk chunk;
  *chunk.mutable_header() = KvHeaderFor(snapshot, reservation_id);
  bool open = writer->Write(chunk);
  if (open) {
    (void)ForEachKvChunk(snapshot, chunk_bytes_, [&](std::string_view data) {
      chunk.set_data(std::string(data));
      open = writer->Write(chunk);
      return open ? absl::OkStatus() : absl::UnavailableError("stream closed");
    });
  }
  if (open) writer->WritesDone();
  const grpc::Status status = writer->Finish();
  if (!status.ok()) {
    return absl::Status(net::FromGrpcStatus(status).code(),
                        absl::StrCat("KV push to ", target, ": ", status.error_message()));
  }
  return response.bytes();
}

}  // namespace lserve
