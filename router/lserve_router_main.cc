// lserve-router: the cluster's front door. Serves the public lserve.v1.Generation API over
// gRPC (API keys, TLS), routes each request to the prefill and decode pools by policy,
// runs the disaggregated KV hand-off, and retries or resumes on failure; workers come from
// the config's static list and from registration (lserve.v1.Router). grpc.health.v1 says
// SERVING while a decode-capable worker is healthy. Prometheus metrics over HTTP.
// SIGTERM or SIGINT drains: no new requests, running ones finish (up to drain_timeout_s).
#include <iostream>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/command_line.h"
#include "common/logging.h"
#include "common/metrics/http_exporter.h"
#include "net/tls.h"
#include "router/api_keys.h"
#include "router/grpc_worker_client.h"
#include "router/router_config.h"
#include "router/router_service.h"

ABSL_FLAG(std::string, config, "", "RouterConfig in text format; flags given too override it");
ABSL_FLAG(std::string, listen, "127.0.0.1:50050", "Public gRPC address host:port (port 0: any)");
ABSL_FLAG(std::string, metrics_listen, "", "Prometheus endpoint host:port; empty: none");
ABSL_FLAG(std::string, port_file, "", "Written with the bound ports once serving");
ABSL_FLAG(std::string, workers, "",
          "Static workers, comma-separated role=host:port (role: unified, prefill, decode)");
ABSL_FLAG(std::string, prefill_policy, "least_loaded", "round_robin, least_loaded or prefix_aware");
ABSL_FLAG(std::string, decode_policy, "least_loaded", "round_robin, least_loaded or prefix_aware");
ABSL_FLAG(int64_t, disaggregation_min_prompt_tokens, 256,
          "Shorter prompts prefill on the decode worker");
ABSL_FLAG(int, prefix_pages, 4, "Prompt pages the prefix-aware policy hashes");
ABSL_FLAG(int, prefix_page_tokens, 16, "Tokens per page for the prefix-aware policy");
ABSL_FLAG(std::string, api_keys_file, "", "API keys, one per line");
ABSL_FLAG(std::string, api_keys_env, "", "Environment variable with comma-separated API keys");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate of the public port");
ABSL_FLAG(std::string, tls_key, "", "PEM key of the public port");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA that client certificates must chain to");
ABSL_FLAG(bool, require_client_cert, false, "mTLS on the public port");
ABSL_FLAG(std::string, worker_tls_ca, "", "PEM CA verifying the workers");
ABSL_FLAG(std::string, worker_tls_cert, "", "PEM certificate presented to workers (mTLS)");
ABSL_FLAG(std::string, worker_tls_key, "", "PEM key presented to workers (mTLS)");
ABSL_FLAG(double, health_interval_s, 1.0, "Active health checks and load polls");
ABSL_FLAG(double, heartbeat_timeout_s, 5.0, "Registered workers silent this long are dropped");
ABSL_FLAG(int, max_attempts, 3, "Attempts per request, the first included");
ABSL_FLAG(int, max_in_flight, 256, "Requests running at once");
ABSL_FLAG(int, max_queue, 1024, "Requests waiting beyond max_in_flight");
ABSL_FLAG(int, max_prompt_tokens, 0, "Longest prompt accepted; 0: the workers' limit");
ABSL_FLAG(int, max_tokens, 0, "Largest max_tokens accepted; 0: the workers' limit");
ABSL_FLAG(int64_t, max_message_bytes, 64 << 20, "Largest gRPC message accepted or sent");
ABSL_FLAG(double, drain_timeout_s, 30, "On SIGTERM, how long running requests may finish");

namespace lserve {
namespace {

absl::StatusOr<v1::RoutingPolicy> PolicyNamed(const std::string& name) {
  if (name == "round_robin") return v1::ROUTING_POLICY_ROUND_ROBIN;
  if (name == "least_loaded") return v1::ROUTING_POLICY_LEAST_LOADED;
  if (name == "prefix_aware") return v1::ROUTING_POLICY_PREFIX_AWARE;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown policy '", name, "': round_robin, least_loaded or prefix_aware"));
}

absl::StatusOr<v1::WorkerRole> RoleNamed(const std::string& name) {
  if (name == "unified") return v1::WORKER_ROLE_UNIFIED;
  if (name == "prefill") return v1::WORKER_ROLE_PREFILL;
  if (name == "decode") return v1::WORKER_ROLE_DECODE;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown worker role '", name, "': unified, prefill or decode"));
}

absl::Status ApplyFlags(v1::RouterConfig& c) {
  if (FlagGiven("listen")) c.set_listen_address(absl::GetFlag(FLAGS_listen));
  if (FlagGiven("metrics_listen")) c.set_metrics_address(absl::GetFlag(FLAGS_metrics_listen));
  if (FlagGiven("port_file")) c.set_port_file(absl::GetFlag(FLAGS_port_file));
  if (FlagGiven("workers")) {
    const std::vector<std::string> entries =
        absl::StrSplit(absl::GetFlag(FLAGS_workers), ',', absl::SkipEmpty());
    for (const std::string& entry : entries) {
      const std::vector<std::string> parts = absl::StrSplit(entry, absl::MaxSplits('=', 1));
      if (parts.size() != 2) {
        return absl::InvalidArgumentError(
            absl::StrCat("--workers entry '", entry, "' is not role=host:port"));
      }
      absl::StatusOr<v1::WorkerRole> role = RoleNamed(parts[0]);
      if (!role.ok()) return role.status();
      v1::WorkerEndpoint* worker = c.add_workers();
      worker->set_role(*role);
      worker->set_address(parts[1]);
    }
  }
  for (auto [flag, setter] :
       {std::pair{&FLAGS_prefill_policy, &v1::RouterConfig::set_prefill_policy},
        std::pair{&FLAGS_decode_policy, &v1::RouterConfig::set_decode_policy}}) {
    if (!FlagGiven(flag == &FLAGS_prefill_policy ? "prefill_policy" : "decode_policy")) continue;
    absl::StatusOr<v1::RoutingPolicy> policy = PolicyNamed(absl::GetFlag(*flag));
    if (!policy.ok()) return policy.status();
    (c.*setter)(*policy);
  }
  if (FlagGiven("disaggregation_min_prompt_tokens")) {
    c.set_disaggregation_min_prompt_tokens(absl::GetFlag(FLAGS_disaggregation_min_prompt_tokens));
  }
  if (FlagGiven("prefix_pages")) c.set_prefix_pages(absl::GetFlag(FLAGS_prefix_pages));
  if (FlagGiven("prefix_page_tokens")) {
    c.set_prefix_page_tokens(absl::GetFlag(FLAGS_prefix_page_tokens));
  }
  if (FlagGiven("api_keys_file")) c.set_api_keys_file(absl::GetFlag(FLAGS_api_keys_file));
  if (FlagGiven("api_keys_env")) c.set_api_keys_env(absl::GetFlag(FLAGS_api_keys_env));
  if (FlagGiven("tls_cert")) c.mutable_tls()->set_cert_file(absl::GetFlag(FLAGS_tls_cert));
  if (FlagGiven("tls_key")) c.mutable_tls()->set_key_file(absl::GetFlag(FLAGS_tls_key));
  if (FlagGiven("tls_ca")) c.mutable_tls()->set_ca_file(absl::GetFlag(FLAGS_tls_ca));
  if (FlagGiven("require_client_cert")) {
    c.mutable_tls()->set_require_client_cert(absl::GetFlag(FLAGS_require_client_cert));
  }
  if (FlagGiven("worker_tls_ca")) {
    c.mutable_worker_tls()->set_ca_file(absl::GetFlag(FLAGS_worker_tls_ca));
  }
  if (FlagGiven("worker_tls_cert")) {
    c.mutable_worker_tls()->set_cert_file(absl::GetFlag(FLAGS_worker_tls_cert));
  }
  if (FlagGiven("worker_tls_key")) {
    c.mutable_worker_tls()->set_key_file(absl::GetFlag(FLAGS_worker_tls_key));
  }
  if (FlagGiven("health_interval_s"))
    c.set_health_interval_s(absl::GetFlag(FLAGS_health_interval_s));
  if (FlagGiven("heartbeat_timeout_s")) {
    c.set_heartbeat_timeout_s(absl::GetFlag(FLAGS_heartbeat_timeout_s));
  }
  if (FlagGiven("max_attempts")) c.set_max_attempts(absl::GetFlag(FLAGS_max_attempts));
  if (FlagGiven("max_in_flight")) c.set_max_in_flight(absl::GetFlag(FLAGS_max_in_flight));
  if (FlagGiven("max_queue")) c.set_max_queue(absl::GetFlag(FLAGS_max_queue));
  if (FlagGiven("max_prompt_tokens"))
    c.set_max_prompt_tokens(absl::GetFlag(FLAGS_max_prompt_tokens));
  if (FlagGiven("max_tokens")) c.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  if (FlagGiven("max_message_bytes")) {
    c.set_max_message_bytes(absl::GetFlag(FLAGS_max_message_bytes));
  }
  if (FlagGiven("drain_timeout_s")) c.set_drain_timeout_s(absl::GetFlag(FLAGS_drain_timeout_s));
  return absl::OkStatus();
}

absl::StatusOr<v1::RouterConfig> ConfigFromFlags() {
  v1::RouterConfig config;
  if (!absl::GetFlag(FLAGS_config).empty()) {
    absl::StatusOr<std::string> text = net::ReadFile(absl::GetFlag(FLAGS_config));
    if (!text.ok()) return text.status();
    absl::StatusOr<v1::RouterConfig> parsed = ParseRouterConfig(*text, absl::GetFlag(FLAGS_config));
    if (!parsed.ok()) return parsed.status();
    config = *std::move(parsed);
  }
  if (absl::Status status = ApplyFlags(config); !status.ok()) return status;
  ApplyRouterDefaults(&config);
  if (config.drain_timeout_s() == 0) config.set_drain_timeout_s(30);
  if (absl::Status status = ValidateRouterConfig(config); !status.ok()) return status;
  return config;
}

int Fail(const absl::Status& status) {
  std::cerr << "lserve-router: " << status << "\n";
  return 2;
}

int Main() {
  absl::StatusOr<v1::RouterConfig> config = ConfigFromFlags();
  if (!config.ok()) return Fail(config.status());
  absl::StatusOr<ApiKeys> keys = ApiKeys::Load(config->api_keys_file(), config->api_keys_env());
  if (!keys.ok()) return Fail(keys.status());
  const v1::TlsConfig& towards_workers = config->worker_tls();
  auto worker_credentials = net::ChannelCredentials(
      {towards_workers.cert_file(), towards_workers.key_file(), towards_workers.ca_file(), false});
  if (!worker_credentials.ok()) return Fail(worker_credentials.status());
  GrpcWorkerClientFactory factory(*worker_credentials,
                                  static_cast<int>(config->max_message_bytes()));
  WorkerRegistry registry(&factory, RegistryOptionsFor(*config));
  for (const v1::WorkerEndpoint& worker : config->workers()) {
    registry.AddStatic(worker.address(), worker.role());
  }
  metrics::Registry metrics_registry;
  absl::StatusOr<std::unique_ptr<RouterMetrics>> metrics =
      RouterMetrics::Create(&metrics_registry, &registry);
  if (!metrics.ok()) return Fail(metrics.status());
  RouterHandler handler(&registry,
                        MakeRoutingPolicy(config->prefill_policy(), config->prefix_pages(),
                                          config->prefix_page_tokens()),
                        MakeRoutingPolicy(config->decode_policy(), config->prefix_pages(),
                                          config->prefix_page_tokens()),
                        RouterOptionsFor(*config), metrics->get());

  const v1::TlsConfig& tls = config->tls();
  auto credentials = net::ServerCredentials(
      {tls.cert_file(), tls.key_file(), tls.ca_file(), tls.require_client_cert()});
  if (!credentials.ok()) return Fail(credentials.status());
  net::ServerOptions server_options;
  server_options.listen_address = config->listen_address();
  server_options.credentials = *credentials;
  server_options.max_message_bytes = static_cast<int>(config->max_message_bytes());
  const auto heartbeat_interval = std::chrono::milliseconds(
      std::max<int64_t>(100, static_cast<int64_t>(config->heartbeat_timeout_s() * 1000 / 3)));
  auto server =
      RouterServer::Start(&handler, &registry, &*keys, server_options, heartbeat_interval);
  if (!server.ok()) return Fail(server.status());
  std::atomic<bool> draining{false};
  registry.StartChecking([&] {
    (*metrics)->WatchAll();
    (*server)->SetServing(!draining && registry.HasPool(Pool::kDecode));
  });

  auto exporter =
      metrics::StartExporterWithHealth(&metrics_registry, config->metrics_address(), [&] {
        if (draining) return std::make_pair(503, std::string("draining\n"));
        return registry.HasPool(Pool::kDecode)
                   ? std::make_pair(200, std::string("ok\n"))
                   : std::make_pair(503, std::string("no healthy decode worker\n"));
      });
  if (!exporter.ok()) return Fail(exporter.status());
  WritePortFile(config->port_file(), (*server)->port(), *exporter ? (**exporter).port() : 0);
  LOG(Info) << "lserve-router on port " << (*server)->port() << " with " << config->workers_size()
            << " static workers" << (keys->enabled() ? ", API keys required" : "");

  const int signal = WaitForStopSignal();
  LOG(Info) << "signal " << signal << ": draining";
  draining = true;
  (*server)->SetServing(false);
  (*server)->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(int64_t(config->drain_timeout_s() * 1000)));
  server->reset();
  LOG(Info) << "drained; exiting";
  return 0;
}

}  // namespace
}  // namespace lserve

int main(int argc, char** argv) {
  // Every thread inherits this mask, so only Main sees SIGTERM and SIGINT.
  lserve::BlockStopSignals();
  absl::SetProgramUsageMessage("Route lserve.v1 requests to prefill and decode workers.");
  lserve::RecordGivenFlags(argc, argv);
  absl::ParseCommandLine(argc, argv);
  return lserve::Main();
}
