// lserve-worker: serves lserve.v1.Generation (and, by role, the hand-off API of
// lserve.v1.Worker) over gRPC, with grpc.health.v1, server reflection and Prometheus
// metrics over HTTP. SIGTERM or SIGINT drains: no new requests, running ones finish
// (up to drain_timeout_s), then the process exits 0.
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "common/command_line.h"
#include "common/logging.h"
#include "common/metrics/http_exporter.h"
#include "net/tls.h"
#include "worker/service/grpc_kv_transport.h"
#if LSERVE_HAVE_NCCL
#include "worker/service/nccl_kv_transport.h"
#endif
#include "worker/service/router_registration.h"
#include "worker/service/worker_config.h"
#include "worker/service/worker_service.h"

ABSL_FLAG(std::string, config, "", "WorkerConfig in text format; flags given too override it");
ABSL_FLAG(std::string, model, "", "Hugging Face model folder; empty: the built-in model");
ABSL_FLAG(std::string, builtin_model, "tiny",
          "Built-in synthetic model: tiny, 100m or llama3-8b (random weights, that geometry)");
ABSL_FLAG(std::string, model_name, "", "Served model name");
ABSL_FLAG(std::string, backend, "cpu", "Compute backend: cpu or cuda");
ABSL_FLAG(int, threads, 0, "CPU threads; 0: one per core");
ABSL_FLAG(int, device, 0, "cuda: device ordinal (keep every GPU visible so NCCL can link them)");
ABSL_FLAG(std::string, kv_transport, "",
          "KV hand-off: grpc or nccl (GPU to GPU, gRPC when a peer cannot); default: nccl on "
          "cuda, grpc on cpu");
ABSL_FLAG(bool, kv_send_during_prefill, true,
          "nccl: send a hand-off's KV layer by layer while the prefill's last chunk computes "
          "it (false: once the prefill is done)");
ABSL_FLAG(int, kv_link_idle_s, 600,
          "nccl: a KV link unused this long closes at both ends, giving its device memory back");
ABSL_FLAG(std::string, role, "unified", "unified, prefill or decode");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "gRPC address host:port (port 0: any)");
ABSL_FLAG(std::string, metrics_listen, "", "Prometheus endpoint host:port; empty: none");
ABSL_FLAG(std::string, port_file, "", "Written with the bound ports once serving");
ABSL_FLAG(int64_t, kv_cache_bytes, 0,
          "KV cache bytes; 0: 4 GiB on cpu, from free device memory on cuda");
ABSL_FLAG(double, gpu_memory_utilization, 0.9,
          "cuda: share of the device memory free after weights and activations that the KV "
          "cache may take, in (0, 1]");
ABSL_FLAG(int, max_context, 0, "Longest prompt + generation; 0: the model's");
ABSL_FLAG(int64_t, max_batch_tokens, 0, "Tokens per engine step; 0: 2048");
ABSL_FLAG(int, max_running, 0, "Requests running at once; 0: 64");
ABSL_FLAG(int, max_queue, 0, "Waiting requests before RESOURCE_EXHAUSTED; 0: 1024");
ABSL_FLAG(bool, prefix_caching, false, "Share KV pages of identical prompt prefixes");
ABSL_FLAG(bool, eager_decode, false,
          "cuda: launch decode steps op by op instead of replaying them as CUDA graphs");
ABSL_FLAG(bool, dense, false, "Turn every attention sparsity off");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate of the gRPC port");
ABSL_FLAG(std::string, tls_key, "", "PEM key of the gRPC port");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA that client certificates must chain to");
ABSL_FLAG(bool, require_client_cert, false, "mTLS: refuse clients without a certificate");
ABSL_FLAG(double, drain_timeout_s, 0, "On SIGTERM, how long running requests may finish");
ABSL_FLAG(std::string, router, "",
          "Register with the router at host:port and heartbeat ($LSERVE_API_KEY: its key)");
ABSL_FLAG(std::string, advertise, "", "Address others reach this worker at; default: bound one");
ABSL_FLAG(std::string, peer_tls_ca, "", "PEM CA verifying other workers and the router");
ABSL_FLAG(std::string, peer_tls_cert, "", "PEM certificate presented to peers (mTLS)");
ABSL_FLAG(std::string, peer_tls_key, "", "PEM key presented to peers (mTLS)");
ABSL_FLAG(int, prefill_local, 0, "Streaming heads' prefill window; 0: the default");
ABSL_FLAG(int, decode_local, 0, "Streaming heads' decode window; 0: the default");
ABSL_FLAG(int, sink, -1, "Streaming heads' sink tokens; -1: the default");
ABSL_FLAG(int, page_size, 0, "KV page size; 0: the default");
ABSL_FLAG(int64_t, token_budget, 0, "Decode token budget; 0: the default");

namespace lserve {
namespace {

bool Given(const char* name) { return FlagGiven(name); }

absl::StatusOr<v1::WorkerConfig> ConfigFromFlags() {
  v1::WorkerConfig config;
  if (!absl::GetFlag(FLAGS_config).empty()) {
    absl::StatusOr<std::string> text = net::ReadFile(absl::GetFlag(FLAGS_config));
    if (!text.ok()) return text.status();
    absl::StatusOr<v1::WorkerConfig> parsed = ParseWorkerConfig(*text, absl::GetFlag(FLAGS_config));
    if (!parsed.ok()) return parsed.status();
    config = *std::move(parsed);
  }
  if (Given("model")) config.set_model_path(absl::GetFlag(FLAGS_model));
  if (Given("builtin_model")) config.set_builtin_model(absl::GetFlag(FLAGS_builtin_model));
  if (Given("model_name")) config.set_model_name(absl::GetFlag(FLAGS_model_name));
  if (Given("backend")) config.set_backend(absl::GetFlag(FLAGS_backend));
  if (Given("threads")) config.set_threads(absl::GetFlag(FLAGS_threads));
  if (Given("device")) config.set_device(absl::GetFlag(FLAGS_device));
  if (Given("kv_transport")) config.set_kv_transport(absl::GetFlag(FLAGS_kv_transport));
  if (Given("role")) {
    const std::string role = absl::GetFlag(FLAGS_role);
    if (role == "unified") {
      config.set_role(v1::WORKER_ROLE_UNIFIED);
    } else if (role == "prefill") {
      config.set_role(v1::WORKER_ROLE_PREFILL);
    } else if (role == "decode") {
      config.set_role(v1::WORKER_ROLE_DECODE);
    } else {
      return absl::InvalidArgumentError("--role must be unified, prefill or decode, got '" + role +
                                        "'");
    }
  }
  if (Given("listen")) config.set_listen_address(absl::GetFlag(FLAGS_listen));
  if (Given("metrics_listen")) config.set_metrics_address(absl::GetFlag(FLAGS_metrics_listen));
  if (Given("port_file")) config.set_port_file(absl::GetFlag(FLAGS_port_file));
  if (Given("kv_cache_bytes")) config.set_kv_cache_bytes(absl::GetFlag(FLAGS_kv_cache_bytes));
  if (Given("gpu_memory_utilization")) {
    config.set_gpu_memory_utilization(absl::GetFlag(FLAGS_gpu_memory_utilization));
  }
  if (Given("max_context")) config.set_max_context(absl::GetFlag(FLAGS_max_context));
  if (Given("max_batch_tokens")) config.set_max_batch_tokens(absl::GetFlag(FLAGS_max_batch_tokens));
  if (Given("max_running")) config.set_max_running(absl::GetFlag(FLAGS_max_running));
  if (Given("max_queue")) config.set_max_queue(absl::GetFlag(FLAGS_max_queue));
  if (Given("prefix_caching")) config.set_prefix_caching(absl::GetFlag(FLAGS_prefix_caching));
  if (Given("eager_decode")) config.set_eager_decode(absl::GetFlag(FLAGS_eager_decode));
  if (Given("dense")) config.mutable_attention()->set_dense(absl::GetFlag(FLAGS_dense));
  if (Given("tls_cert")) config.mutable_tls()->set_cert_file(absl::GetFlag(FLAGS_tls_cert));
  if (Given("tls_key")) config.mutable_tls()->set_key_file(absl::GetFlag(FLAGS_tls_key));
  if (Given("tls_ca")) config.mutable_tls()->set_ca_file(absl::GetFlag(FLAGS_tls_ca));
  if (Given("require_client_cert")) {
    config.mutable_tls()->set_require_client_cert(absl::GetFlag(FLAGS_require_client_cert));
  }
  if (Given("drain_timeout_s")) config.set_drain_timeout_s(absl::GetFlag(FLAGS_drain_timeout_s));
  if (Given("router")) config.set_router_address(absl::GetFlag(FLAGS_router));
  if (Given("advertise")) config.set_advertise_address(absl::GetFlag(FLAGS_advertise));
  if (Given("peer_tls_ca"))
    config.mutable_peer_tls()->set_ca_file(absl::GetFlag(FLAGS_peer_tls_ca));
  if (Given("peer_tls_cert")) {
    config.mutable_peer_tls()->set_cert_file(absl::GetFlag(FLAGS_peer_tls_cert));
  }
  if (Given("peer_tls_key"))
    config.mutable_peer_tls()->set_key_file(absl::GetFlag(FLAGS_peer_tls_key));
  v1::AttentionSettings* attention = config.mutable_attention();
  if (Given("prefill_local")) attention->set_prefill_local(absl::GetFlag(FLAGS_prefill_local));
  if (Given("decode_local")) attention->set_decode_local(absl::GetFlag(FLAGS_decode_local));
  if (Given("sink")) attention->set_sink(absl::GetFlag(FLAGS_sink));
  if (Given("page_size")) attention->set_page_size(absl::GetFlag(FLAGS_page_size));
  if (Given("token_budget")) attention->set_token_budget(absl::GetFlag(FLAGS_token_budget));
  ApplyWorkerDefaults(&config);
  if (absl::Status status = ValidateWorkerConfig(config); !status.ok()) return status;
  return config;
}

int Fail(const absl::Status& status) {
  std::cerr << "lserve-worker: " << status << "\n";
  return 2;
}

int Main() {
  absl::StatusOr<v1::WorkerConfig> config = ConfigFromFlags();
  if (!config.ok()) return Fail(config.status());
  absl::StatusOr<ModelWeights> weights = LoadWorkerModel(*config);
  if (!weights.ok()) return Fail(weights.status());
  absl::StatusOr<EngineOptions> engine_options = EngineOptionsFor(*config);
  if (!engine_options.ok()) return Fail(engine_options.status());
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(*std::move(weights), *engine_options);
  if (!engine.ok()) return Fail(engine.status());
  absl::StatusOr<SchedulerOptions> scheduler_options = SchedulerOptionsFor(*config);
  if (!scheduler_options.ok()) return Fail(scheduler_options.status());
  absl::StatusOr<std::unique_ptr<Scheduler>> scheduler =
      Scheduler::Create(engine->get(), *scheduler_options);
  if (!scheduler.ok()) return Fail(scheduler.status());

  metrics::Registry registry;
  std::atomic<WorkerMetrics*> metrics_ready{nullptr};
  EngineLoop loop(engine->get(), scheduler->get(),
                  [&](double seconds, const LoopSnapshot& before, const LoopSnapshot& after) {
                    if (WorkerMetrics* m = metrics_ready.load()) m->Step(seconds, before, after);
                  });
  absl::StatusOr<std::unique_ptr<WorkerMetrics>> metrics = WorkerMetrics::Create(&registry, &loop);
  if (!metrics.ok()) return Fail(metrics.status());
  metrics_ready = metrics->get();

  const v1::TlsConfig& peer = config->peer_tls();
  auto peer_credentials =
      net::ChannelCredentials({peer.cert_file(), peer.key_file(), peer.ca_file(), false});
  if (!peer_credentials.ok()) return Fail(peer_credentials.status());
  GrpcKvTransport grpc_transport(*peer_credentials, static_cast<int>(config->max_message_bytes()));
  KvTransport* transport = &grpc_transport;
  std::unique_ptr<KvTransport> nccl_transport;
  std::unique_ptr<KvLinkReceiver> link_receiver;
  if (config->kv_transport() == "nccl") {
#if LSERVE_HAVE_NCCL
    const std::chrono::milliseconds idle(int64_t{1000} * absl::GetFlag(FLAGS_kv_link_idle_s));
    nccl_transport = std::make_unique<NcclKvTransport>(
        *peer_credentials, static_cast<int>(config->max_message_bytes()),
        NcclKvOptions{.device = config->device(),
                      .send_during_prefill = absl::GetFlag(FLAGS_kv_send_during_prefill),
                      .link_idle_close = idle},
        &grpc_transport,
        [m = metrics->get()](std::string_view reason) { m->KvTransportFallback(reason); });
    transport = nccl_transport.get();
    link_receiver = std::make_unique<NcclKvLinkReceiver>(config->device(), 16, idle);
#else
    LOG(Warning) << "built without NCCL: KV hand-offs use gRPC";
    (*metrics)->KvTransportFallback("not_built");
#endif
  }
  WorkerIdentity identity;
  identity.model_name = ServedModelName(*config);
  identity.role = config->role();
  identity.backend = config->backend();
  identity.max_context =
      config->max_context() > 0
          ? std::min(config->max_context(), (*engine)->config().max_position_embeddings)
          : (*engine)->config().max_position_embeddings;
  identity.kv_lease = std::chrono::milliseconds(config->kv_lease_ms());
  WorkerHandler handler(&loop, identity, transport, metrics->get());
  if (config->role() != v1::WORKER_ROLE_PREFILL) handler.set_kv_link_receiver(link_receiver.get());

  const v1::TlsConfig& tls = config->tls();
  auto credentials = net::ServerCredentials(
      {tls.cert_file(), tls.key_file(), tls.ca_file(), tls.require_client_cert()});
  if (!credentials.ok()) return Fail(credentials.status());
  auto server = WorkerServer::Start(&handler, {config->listen_address(), *credentials,
                                               static_cast<int>(config->max_message_bytes())});
  if (!server.ok()) return Fail(server.status());

  auto exporter =
      metrics::StartExporterWithHealth(&registry, config->metrics_address(), [&handler] {
        return handler.draining() ? std::make_pair(503, std::string("draining\n"))
                                  : std::make_pair(200, std::string("ok\n"));
      });
  if (!exporter.ok()) return Fail(exporter.status());
  WritePortFile(config->port_file(), (*server)->port(), *exporter ? (**exporter).port() : 0);
  std::unique_ptr<RouterRegistration> registration;
  if (!config->router_address().empty()) {
    v1::RegisterRequest announcement;
    announcement.set_address(
        config->advertise_address().empty()
            ? absl::StrCat(SplitHostPort(config->listen_address()).first, ":", (*server)->port())
            : config->advertise_address());
    announcement.set_role(config->role());
    announcement.set_model(identity.model_name);
    const char* api_key = std::getenv("LSERVE_API_KEY");
    registration = std::make_unique<RouterRegistration>(config->router_address(), *peer_credentials,
                                                        announcement, api_key ? api_key : "");
  }
  LOG(Info) << "lserve-worker serving " << identity.model_name << " on port " << (*server)->port()
            << " (" << config->role() << ", backend " << config->backend() << ")";

  const int signal = WaitForStopSignal();
  LOG(Info) << "signal " << signal << ": draining";
  handler.Drain();
  (*server)->SetServing(false);
  registration.reset();  // the router stops sending work once the heartbeats stop
  const auto give_up = std::chrono::steady_clock::now() +
                       std::chrono::milliseconds(int64_t(config->drain_timeout_s() * 1000));
  while (!handler.Idle() && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // Streams still open past the drain timeout are cancelled by the shutdown.
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  link_receiver.reset();   // its waiting receives end on the engine thread
  handler.StopHandOffs();  // hand-offs sent during prefills end on the engine thread too
  loop.Stop();
  LOG(Info) << "drained; exiting";
  return 0;
}

}  // namespace
}  // namespace lserve

int main(int argc, char** argv) {
  // Every thread inherits this mask, so only Main sees SIGTERM and SIGINT.
  lserve::BlockStopSignals();
  absl::SetProgramUsageMessage("Serve an LLM over gRPC (lserve.v1).");
  lserve::RecordGivenFlags(argc, argv);
  absl::ParseCommandLine(argc, argv);
  return lserve::Main();
}
