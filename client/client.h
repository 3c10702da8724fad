// The C++ client SDK of lserve.v1: generation as a token stream, abort, model info and
// load, against a router or a worker, with TLS, mTLS and API keys.
#ifndef LSERVE_CLIENT_CLIENT_H_
#define LSERVE_CLIENT_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lserve/v1/generation.grpc.pb.h"
#include "net/tls.h"

namespace lserve {

struct ClientOptions {
  std::string target = "127.0.0.1:50051";
  net::TlsFiles tls;    // ca_file: verify the server; cert/key: present one (mTLS)
  std::string api_key;  // sent as "authorization: Bearer <key>"
  int max_message_bytes = 64 << 20;
  std::string tls_server_name;  // overrides the name checked in the server's certificate
};

// Payload of a RESOURCE_EXHAUSTED status: milliseconds the server asks the client to wait.
inline constexpr char kRetryPushbackPayload[] = "lserve.dev/retry-pushback-ms";

struct GenerateResult {
  std::vector<v1::GeneratedToken> tokens;
  v1::FinishReason finish_reason = v1::FINISH_REASON_UNSPECIFIED;
  v1::Timings timings;
};

class Client {
 public:
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const ClientOptions& options);

  // Streams the request's tokens to on_tokens (may be null) as they arrive and returns the
  // whole result; `timeout` bounds the call (0: none). A non-OK status carries the
  // server's code and message.
  absl::StatusOr<GenerateResult> Generate(
      const v1::GenerateRequest& request,
      const std::function<void(const v1::GenerateResponse&)>& on_tokens = nullptr,
      std::chrono::milliseconds timeout = std::chrono::milliseconds(0));
  absl::Status Abort(const std::string& request_id);
  absl::StatusOr<v1::ModelInfo> ModelInfo();
  absl::StatusOr<v1::Load> Load();
  // Until grpc.health.v1 says SERVING (OK), or `timeout` passes (the last answer).
  absl::Status WaitServing(std::chrono::milliseconds timeout);

  v1::Generation::Stub& stub() { return *stub_; }
  std::shared_ptr<grpc::Channel> channel() { return channel_; }
  // Applies the API key and timeout to a context the caller made.
  void Prepare(grpc::ClientContext* context, std::chrono::milliseconds timeout) const;

 private:
  ClientOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Generation::Stub> stub_;
};

}  // namespace lserve

#endif  // LSERVE_CLIENT_CLIENT_H_
