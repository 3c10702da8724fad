#include "worker/service/worker_config.h"

#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "net/text_config.h"
#include "worker/model/synthetic_model.h"

namespace lserve {
namespace {

absl::Status Invalid(const std::string& field, const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("worker config: ", field, " ", why));
}

}  // namespace

void ApplyWorkerDefaults(v1::WorkerConfig* c) {
  if (c->model_path().empty() && c->builtin_model().empty()) c->set_builtin_model("tiny");
  if (c->model_seed() == 0) c->set_model_seed(1);
  if (c->backend().empty()) c->set_backend("cpu");
  if (c->kv_transport().empty()) c->set_kv_transport(c->backend() == "cuda" ? "nccl" : "grpc");
  if (c->role() == v1::WORKER_ROLE_UNSPECIFIED) c->set_role(v1::WORKER_ROLE_UNIFIED);
  if (c->gpu_memory_utilization() == 0) c->set_gpu_memory_utilization(0.9);
  if (c->max_batch_tokens() == 0) c->set_max_batch_tokens(2048);
  if (c->max_running() == 0) c->set_max_running(64);
  if (c->max_queue() == 0) c->set_max_queue(1024);
  if (c->max_message_bytes() == 0) c->set_max_message_bytes(int64_t{64} << 20);
  if (c->preemption().empty()) c->set_preemption("recompute");
  if (c->swap_bytes() == 0) c->set_swap_bytes(int64_t{1} << 30);
  if (c->kv_lease_ms() == 0) c->set_kv_lease_ms(30000);
  if (c->listen_address().empty()) c->set_listen_address("127.0.0.1:50051");
  if (c->drain_timeout_s() == 0) c->set_drain_timeout_s(30);
}

absl::StatusOr<v1::WorkerConfig> ParseWorkerConfig(const std::string& text,
                                                   const std::string& source) {
  return net::ParseTextConfig<v1::WorkerConfig>(text, source);
}

absl::Status ValidateWorkerConfig(const v1::WorkerConfig& c) {
  if (!c.model_path().empty() && !std::filesystem::is_directory(c.model_path())) {
    return Invalid("model_path", absl::StrCat("'", c.model_path(), "' is not a folder"));
  }
  if (c.model_path().empty() && c.builtin_model() != "tiny" && c.builtin_model() != "100m" &&
      c.builtin_model() != "llama3-8b") {
    return Invalid("builtin_model",
                   absl::StrCat("must be tiny, 100m or llama3-8b, got '", c.builtin_model(), "'"));
  }
  if (c.backend() != "cpu" && c.backend() != "cuda") {
    return Invalid("backend", absl::StrCat("must be cpu or cuda, got '", c.backend(), "'"));
  }
  if (c.kv_transport() != "grpc" && c.kv_transport() != "nccl") {
    return Invalid("kv_transport",
                   absl::StrCat("must be grpc or nccl, got '", c.kv_transport(), "'"));
  }
  if (c.kv_transport() == "nccl" && c.backend() != "cuda") {
    return Invalid("kv_transport", "nccl needs the cuda backend");
  }
  if (c.device() < 0) {
    return Invalid("device", absl::StrCat("must be >= 0, got ", c.device()));
  }
  if (c.threads() < 0 || c.threads() > 1024) return Invalid("threads", "must be in [0, 1024]");
  if (!std::isfinite(c.gpu_memory_utilization()) || c.gpu_memory_utilization() <= 0 ||
      c.gpu_memory_utilization() > 1) {
    return Invalid("gpu_memory_utilization", "must be in (0, 1]");
  }
  if (c.kv_cache_bytes() < 0) return Invalid("kv_cache_bytes", "must be >= 0");
  if (c.max_context() < 0) return Invalid("max_context", "must be >= 0");
  if (c.max_batch_tokens() <= 0 || c.max_running() <= 0 || c.max_queue() <= 0) {
    return Invalid("max_batch_tokens, max_running and max_queue", "must be positive");
  }
  if (c.max_message_bytes() < 4096 || c.max_message_bytes() > (int64_t{1} << 31) - 1) {
    return Invalid("max_message_bytes", "must be in [4096, 2^31)");
  }
  if (c.prefill_chunk() < 0) return Invalid("prefill_chunk", "must be >= 0");
  if (c.preemption() != "recompute" && c.preemption() != "swap") {
    return Invalid("preemption", "must be recompute or swap");
  }
  if (c.swap_bytes() < 0) return Invalid("swap_bytes", "must be >= 0");
  if (!std::isfinite(c.drain_timeout_s()) || c.drain_timeout_s() < 0) {
    return Invalid("drain_timeout_s", "must be >= 0");
  }
  if (c.listen_address().find(':') == std::string::npos) {
    return Invalid("listen_address", "must be host:port");
  }
  if (!c.metrics_address().empty() && c.metrics_address().find(':') == std::string::npos) {
    return Invalid("metrics_address", "must be host:port");
  }
  for (const v1::TlsConfig* tls : {&c.tls(), &c.peer_tls()}) {
    if (tls->cert_file().empty() != tls->key_file().empty()) {
      return Invalid("tls", "needs both cert_file and key_file, or neither");
    }
  }
  if (c.tls().require_client_cert() && c.tls().ca_file().empty()) {
    return Invalid("tls.require_client_cert", "needs tls.ca_file");
  }
  RETURN_IF_ERROR(AttentionFor(c.attention()).status());
  return absl::OkStatus();
}

absl::StatusOr<SparseAttentionConfig> AttentionFor(const v1::AttentionSettings& s) {
  SparseAttentionConfig a;
  if (s.has_dense() && s.dense()) a = SparseAttentionConfig::Dense();
  if (s.has_streaming_heads()) a.streaming_heads = s.streaming_heads();
  if (s.has_streaming_ratio()) a.streaming_ratio = s.streaming_ratio();
  a.gate_file = s.gate_file();
  if (s.has_sink()) a.sink = s.sink();
  if (s.has_prefill_local()) a.prefill_local = s.prefill_local();
  if (s.has_decode_local()) a.decode_local = s.decode_local();
  if (s.has_page_size()) a.page_size = s.page_size();
  if (s.has_logical_page_size()) a.logical_page_size = s.logical_page_size();
  if (s.has_page_selection()) a.page_selection = s.page_selection();
  if (s.has_token_budget()) a.token_budget = s.token_budget();
  if (s.has_reuse_interval()) a.reuse_interval = s.reuse_interval();
  if (!s.page_scoring().empty()) RETURN_IF_ERROR(ParsePageScoring(s.page_scoring(), &a.scoring));
  RETURN_IF_ERROR(ValidateSparseAttentionConfig(a));
  return a;
}

absl::StatusOr<EngineOptions> EngineOptionsFor(const v1::WorkerConfig& c) {
  EngineOptions options;
  options.backend = c.backend();
  options.num_threads = c.threads();
  options.device = c.device();
  ASSIGN_OR_RETURN(options.attention, AttentionFor(c.attention()));
  options.max_sequences = c.max_running();
  options.max_kv_cache_bytes = c.kv_cache_bytes();
  options.gpu_memory_utilization = c.gpu_memory_utilization();
  options.max_chunk_tokens = std::min<int64_t>(c.max_batch_tokens(), 2048);
  if (c.prefill_chunk() > 0)
    options.max_chunk_tokens = std::min(options.max_chunk_tokens, c.prefill_chunk());
  options.prefix_caching = c.prefix_caching();
  options.replay_decode_steps = !c.eager_decode();
  return options;
}

absl::StatusOr<SchedulerOptions> SchedulerOptionsFor(const v1::WorkerConfig& c) {
  SchedulerOptions options;
  options.max_step_tokens = c.max_batch_tokens();
  options.prefill_chunk = c.prefill_chunk();
  options.max_running = c.max_running();
  options.max_waiting = c.max_queue();
  options.preemption =
      c.preemption() == "swap" ? PreemptionMode::kSwap : PreemptionMode::kRecompute;
  options.max_swap_bytes = c.swap_bytes();
  RETURN_IF_ERROR(ValidateSchedulerOptions(options));
  return options;
}

absl::StatusOr<ModelWeights> LoadWorkerModel(const v1::WorkerConfig& c) {
  if (!c.model_path().empty()) return LoadModelWeights(c.model_path());
  const ModelConfig config = c.builtin_model() == "100m"        ? Synthetic100MConfig()
                             : c.builtin_model() == "llama3-8b" ? Llama3_8BConfig()
                                                                : TinySyntheticConfig();
  return MakeSyntheticWeights(config, c.model_seed());
}

std::string ServedModelName(const v1::WorkerConfig& c) {
  if (!c.model_name().empty()) return c.model_name();
  if (!c.model_path().empty()) {
    std::filesystem::path path = std::filesystem::path(c.model_path()).lexically_normal();
    if (path.filename().empty()) path = path.parent_path();
    return path.filename().string();
  }
  return absl::StrCat("builtin-", c.builtin_model());
}

}  // namespace lserve
