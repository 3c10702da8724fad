// The cluster's security on 127.0.0.1: API keys on the router's public API (missing or
// wrong: UNAUTHENTICATED; worker registration needs a key or a client certificate), TLS
// on the public port and mutual TLS between the router and the workers and among workers
// (the KV hand-off), with certificates the test generates; a client without a
// certificate cannot reach a worker.
#include <cstdlib>

#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "lserve/v1/worker.grpc.pb.h"
#include "tests/router/cluster_util.h"

namespace lserve {
namespace {

using testing::Cluster;
using testing::ClusterOptions;
using testing::Ids;
using testing::Request;

constexpr char kKey[] = "sk-test-0123456789abcdef";

TEST(ClusterSecurityTest, ApiKeysGuardThePublicApiAndRegistration) {
  setenv("LSERVE_TEST_ROUTER_KEYS", (std::string("another-key,") + kKey).c_str(), 1);
  setenv("LSERVE_API_KEY", kKey, 1);  // the workers register with it
  ClusterOptions options;
  options.router_args = {"--api_keys_env=LSERVE_TEST_ROUTER_KEYS", "--max_message_bytes=65536",
                         "--max_prompt_tokens=4000", "--max_tokens=100"};
  options.router_client.api_key = kKey;
  options.reference = false;
  auto cluster = Cluster::Start(options);
  unsetenv("LSERVE_API_KEY");
  ASSERT_TRUE(cluster.ok()) << cluster.status();

  auto with_key = (*cluster)->ConnectRouter();
  auto result = with_key->Generate(Request(40, 1, 6, 0.0f));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->tokens.size(), 6u);
  // Limits: message size, prompt length, max_tokens.
  EXPECT_EQ(with_key->Generate(Request(40000, 1, 6, 0.0f)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(with_key->Generate(Request(4001, 1, 6, 0.0f)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(with_key->Generate(Request(40, 1, 101, 0.0f)).status().code(),
            absl::StatusCode::kInvalidArgument);

  for (const char* key : {"", "sk-test-0123456789abcdeX", "another-key-but-longer"}) {
    ClientOptions client_options;
    client_options.api_key = key;
    auto client = (*cluster)->Connect((*cluster)->router(), client_options);
    EXPECT_EQ(client->Generate(Request(40, 1, 6, 0.0f)).status().code(),
              absl::StatusCode::kUnauthenticated)
        << "key '" << key << "'";
    EXPECT_EQ(client->ModelInfo().status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(client->Load().status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ(client->Abort("x").code(), absl::StatusCode::kUnauthenticated);
    // Health stays open, for load balancers and probes.
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    grpc::health::v1::HealthCheckResponse response;
    EXPECT_TRUE(grpc::health::v1::Health::NewStub(client->channel())
                    ->Check(&context, request, &response)
                    .ok());
    // A worker registering without a key is refused.
    grpc::ClientContext register_context;
    v1::RegisterRequest announcement;
    announcement.set_address("127.0.0.1:1");
    announcement.set_role(v1::WORKER_ROLE_DECODE);
    v1::RegisterResponse registered;
    if (key[0] != '\0') register_context.AddMetadata("authorization", std::string("Bearer ") + key);
    EXPECT_EQ(v1::Router::NewStub(client->channel())
                  ->Register(&register_context, announcement, &registered)
                  .error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
}

TEST(ClusterSecurityTest, TlsOnThePublicPortAndMutualTlsInsideTheCluster) {
  const std::string dir = testing::TempDir();
  ASSERT_EQ(std::system(("bash " LSERVE_SOURCE_DIR "/tests/tls/make_test_certs.sh " + dir).c_str()),
            0);
  const std::string ca = dir + "/ca.pem";
  ClusterOptions options;
  options.worker_args = {"--tls_cert=" + dir + "/server.pem",
                         "--tls_key=" + dir + "/server.key",
                         "--tls_ca=" + ca,
                         "--require_client_cert",
                         "--peer_tls_ca=" + ca,
                         "--peer_tls_cert=" + dir + "/client.pem",
                         "--peer_tls_key=" + dir + "/client.key"};
  options.router_args = {"--tls_cert=" + dir + "/server.pem",
                         "--tls_key=" + dir + "/server.key",
                         "--tls_ca=" + ca,
                         "--worker_tls_ca=" + ca,
                         "--worker_tls_cert=" + dir + "/client.pem",
                         "--worker_tls_key=" + dir + "/client.key"};
  options.router_client.tls.ca_file = ca;
  options.worker_client.tls = {dir + "/client.pem", dir + "/client.key", ca};
  auto cluster = Cluster::Start(options);
  ASSERT_TRUE(cluster.ok()) << cluster.status();

  // Through the router over TLS, with a hand-off between workers over mTLS: exact.
  const v1::GenerateRequest request = Request(60, 2, 12, 0.8f);
  auto result = (*cluster)->ConnectRouter()->Generate(request);
  ASSERT_TRUE(result.ok()) << result.status();
  auto expected = (*cluster)->Connect((*cluster)->reference())->Generate(request);
  ASSERT_TRUE(expected.ok()) << expected.status();
  EXPECT_EQ(Ids(*result), Ids(*expected));

  // Plaintext to the router fails.
  auto plaintext = (*cluster)->Connect((*cluster)->router(), ClientOptions{});
  EXPECT_EQ(plaintext->Generate(request, nullptr, std::chrono::seconds(5)).status().code(),
            absl::StatusCode::kUnavailable);
  // A client without a certificate, or with one from another CA, cannot reach a worker.
  for (net::TlsFiles files :
       {net::TlsFiles{"", "", ca},
        net::TlsFiles{dir + "/other-client.pem", dir + "/other-client.key", ca}}) {
    ClientOptions client_options;
    client_options.tls = files;
    for (testing::ServerProcess* worker : {&(*cluster)->decode(0), &(*cluster)->prefill(0)}) {
      auto client = (*cluster)->Connect(*worker, client_options);
      EXPECT_EQ(client->Generate(request, nullptr, std::chrono::seconds(5)).status().code(),
                absl::StatusCode::kUnavailable)
          << files.cert_file;
      EXPECT_FALSE(client->Load().ok());
    }
  }
}

}  // namespace
}  // namespace lserve
