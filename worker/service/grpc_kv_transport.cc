#include "worker/service/grpc_kv_transport.h"

#include "absl/strings/str_cat.h"
#include "worker/service/kv_wire.h"

namespace lserve {

GrpcKvTransport::GrpcKvTransport(std::shared_ptr<grpc::ChannelCredentials> credentials,
                                 int max_message_bytes, size_t chunk_bytes)
    : stubs_(std::move(credentials), max_message_bytes), chunk_bytes_(chunk_bytes) {}

absl::StatusOr<KvPushResult> GrpcKvTransport::Push(const std::string& target,
                                                   uint64_t reservation_id, KvSource& source,
                                                   std::chrono::steady_clock::time_point deadline) {
  absl::StatusOr<KvSnapshot> read = source.ReadSnapshot();
  if (!read.ok()) return read.status();
  const KvSnapshot& snapshot = *read;
  grpc::ClientContext context;
  SetDeadline(context, deadline);
  v1::PushKvResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::KvChunk>> writer =
      stubs_.For(target)->PushKv(&context, &response);
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
  if (absl::Status status = FromGrpc(writer->Finish(), absl::StrCat("KV push to ", target));
      !status.ok()) {
    return status;
  }
  return KvPushResult{response.bytes(), "grpc"};
}

}  // namespace lserve
