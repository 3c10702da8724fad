// TLS for gRPC servers and channels, from PEM files: server TLS, mutual TLS (clients must
// present a certificate signed by the given CA) and the matching channel credentials.
#ifndef LSERVE_NET_TLS_H_
#define LSERVE_NET_TLS_H_

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace lserve::net {

struct TlsFiles {
  std::string cert_file;             // PEM certificate chain
  std::string key_file;              // PEM private key
  std::string ca_file;               // PEM roots that verify the peer; server: enables mTLS
  bool require_client_cert = false;  // server: refuse clients without a valid certificate
};

// Insecure credentials when cert_file and key_file are both empty (and ca_file too).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const TlsFiles& files);

// Client side: insecure when every file is empty; otherwise TLS verifying the server with
// ca_file, and presenting cert_file/key_file when given (mTLS).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(const TlsFiles& files);

absl::StatusOr<std::string> ReadFile(const std::string& path);

}  // namespace lserve::net

#endif  // LSERVE_NET_TLS_H_
