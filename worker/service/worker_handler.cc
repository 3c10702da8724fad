#include "worker/service/worker_handler.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "net/generation_defaults.h"
#include "worker/attention/attention_config.h"

namespace lserve {

v1::GeneratedToken ToProtoToken(const GeneratedToken& token, bool logprobs) {
  v1::GeneratedToken out;
  out.set_token_id(token.id);
  if (!logprobs) return out;
  out.set_logprob(token.logprob);
  for (const auto& [id, logprob] : token.top_logprobs) {
    v1::TokenLogprob* top = out.add_top_logprobs();
    top->set_token_id(id);
    top->set_logprob(logprob);
  }
  return out;
}

v1::Timings ToProtoTimings(const RequestTimings& t) {
  v1::Timings out;
  out.set_queue_s(t.queue_s);
  out.set_time_to_first_token_s(t.time_to_first_token_s);
  out.set_total_s(t.total_s);
  out.set_prompt_tokens(t.prompt_tokens);
  out.set_cached_prompt_tokens(t.cached_prompt_tokens);
  out.set_prefill_tokens(t.prefill_tokens);
  out.set_generated_tokens(t.generated_tokens);
  out.set_preemptions(t.preemptions);
  return out;
}

namespace {

const char* RoleName(v1::WorkerRole role) {
  switch (role) {
    case v1::WORKER_ROLE_PREFILL:
      return "prefill";
    case v1::WORKER_ROLE_DECODE:
      return "decode";
    default:
      return "unified";
  }
}

}  // namespace

WorkerHandler::WorkerHandler(EngineLoop* loop, WorkerIdentity identity, KvTransport* transport,
                             WorkerMetrics* metrics)
    : loop_(loop), identity_(std::move(identity)), transport_(transport), metrics_(metrics) {
  if (identity_.role == v1::WORKER_ROLE_UNSPECIFIED) identity_.role = v1::WORKER_ROLE_UNIFIED;
  if (transport_ != nullptr && transport_->sends_while_computing() &&
      identity_.role != v1::WORKER_ROLE_DECODE) {
    early_pushes_ = std::make_unique<EarlyKvPushes>(loop_, transport_);
  }
}

WorkerHandler::~WorkerHandler() = default;

absl::StatusOr<GenerationRequest> WorkerHandler::ToRequest(
    const v1::GenerateRequest& r, std::optional<SteadyClock::time_point> deadline) const {
  if (!r.model().empty() && r.model() != identity_.model_name) {
    return absl::NotFoundError(absl::StrCat("unknown model '", r.model(), "': this worker serves '",
                                            identity_.model_name, "'"));
  }
  if (!r.prompt_text().empty()) {
    return absl::InvalidArgumentError(
        "text prompts need the model's tokenizer, which this worker does not have: send "
        "prompt_token_ids");
  }
  if (r.prompt_token_ids().empty()) return absl::InvalidArgumentError("the prompt is empty");
  const v1::SamplingParams& s = r.sampling();
  if (!s.stop_strings().empty()) {
    return absl::InvalidArgumentError(
        "stop strings need the model's tokenizer: use stop_token_ids");
  }
  if (s.max_tokens() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be positive, got ", s.max_tokens()));
  }
  if (s.top_logprobs() < 0 || s.top_logprobs() > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_logprobs must be in [0, ", kMaxTopLogprobs, "], got ", s.top_logprobs()));
  }
  GenerationRequest request;
  request.prompt.assign(r.prompt_token_ids().begin(), r.prompt_token_ids().end());
  request.sampling.temperature = s.temperature();
  request.sampling.top_k = s.top_k();
  request.sampling.top_p = s.top_p() == 0.0f ? 1.0f : s.top_p();
  request.sampling.seed = s.seed();
  request.sampling.max_tokens = s.max_tokens() == 0 ? net::kDefaultMaxTokens : s.max_tokens();
  request.sampling.stop_token_ids.assign(s.stop_token_ids().begin(), s.stop_token_ids().end());
  request.sampling.logprobs = s.logprobs() ? s.top_logprobs() : -1;
  request.sampling.draw_offset = s.draw_offset();
  request.priority = r.priority();
  request.client_request_id = r.request_id();
  request.deadline = deadline;
  if (r.timeout_ms() > 0) {
    const auto timeout = SteadyClock::now() + std::chrono::milliseconds(r.timeout_ms());
    if (!request.deadline || timeout < *request.deadline) request.deadline = timeout;
  }
  const int64_t prompt = static_cast<int64_t>(request.prompt.size());
  const int64_t context = identity_.max_context;
  if (context > 0 && prompt + request.sampling.max_tokens > context) {
    return absl::InvalidArgumentError(absl::StrCat("prompt (", prompt, " tokens) + max_tokens (",
                                                   request.sampling.max_tokens,
                                                   ") exceeds the context length ", context));
  }
  return request;
}

void WorkerHandler::Forget(const std::string& client_id) {
  if (client_id.empty()) return;
  std::lock_guard<std::mutex> lock(ids_mu_);
  client_ids_.erase(client_id);
}

EngineLoop::EventSink WorkerHandler::StreamSink(std::string client_id, bool logprobs,
                                                ResponseSink sink) {
  struct Progress {
    SteadyClock::time_point last_token;
    int64_t tokens = 0;
  };
  auto progress = std::make_shared<Progress>();
  return [this, client_id = std::move(client_id), logprobs, sink = std::move(sink),
          progress](const RequestEvent& event) {
    v1::GenerateResponse response;
    response.set_request_id(client_id);
    const SteadyClock::time_point now = SteadyClock::now();
    for (const GeneratedToken& token : event.tokens) {
      *response.add_tokens() = ToProtoToken(token, logprobs);
      if (metrics_ != nullptr && progress->tokens > 0) {
        metrics_->InterTokenLatency(
            std::chrono::duration<double>(now - progress->last_token).count());
      }
      ++progress->tokens;
    }
    if (!event.tokens.empty()) progress->last_token = now;
    if (metrics_ != nullptr && event.finished && event.status.ok() &&
        event.timings.generated_tokens > 0) {
      metrics_->TimeToFirstToken(event.timings.time_to_first_token_s);
    }
    if (!event.finished) {
      sink(response, false, absl::OkStatus());
      return;
    }
    if (event.status.ok()) {
      response.set_finish_reason(event.finish_reason == FinishReason::kStop
                                     ? v1::FINISH_REASON_STOP
                                     : v1::FINISH_REASON_LENGTH);
      *response.mutable_timings() = ToProtoTimings(event.timings);
    }
    if (metrics_ != nullptr) {
      metrics_->RequestFinished(event.status, event.finish_reason, event.timings);
    }
    Forget(client_id);
    sink(response, true, event.status);
  };
}

absl::StatusOr<RequestId> WorkerHandler::StartGenerate(
    const v1::GenerateRequest& proto, std::optional<SteadyClock::time_point> deadline,
    ResponseSink sink) {
  absl::StatusOr<GenerationRequest> request = ToRequest(proto, deadline);
  if (request.ok() && !proto.request_id().empty()) {
    std::lock_guard<std::mutex> lock(ids_mu_);
    if (client_ids_.count(proto.request_id()) > 0) {
      request = absl::AlreadyExistsError(
          absl::StrCat("a request with id '", proto.request_id(), "' is already running"));
    } else {
      client_ids_[proto.request_id()] = -1;  // claimed until the id is known
    }
  }
  if (!request.ok()) {
    if (metrics_ != nullptr) metrics_->RequestRefused(request.status());
    return request.status();
  }
  const bool logprobs = request->sampling.logprobs >= 0;
  absl::StatusOr<RequestId> id =
      loop_->Submit(*std::move(request), StreamSink(proto.request_id(), logprobs, std::move(sink)));
  if (!id.ok()) {
    Forget(proto.request_id());
    // Requests past the context are the caller's mistake, like any other bad value.
    absl::Status status = id.status();
    if (status.code() == absl::StatusCode::kOutOfRange) {
      status = absl::InvalidArgumentError(status.message());
    }
    if (metrics_ != nullptr) metrics_->RequestRefused(status);
    return status;
  }
  if (!proto.request_id().empty()) {
    std::lock_guard<std::mutex> lock(ids_mu_);
    auto it = client_ids_.find(proto.request_id());
    if (it != client_ids_.end()) it->second = *id;  // unless it already finished
  }
  return id;
}

void WorkerHandler::Cancel(RequestId id) { (void)loop_->Abort(id); }

absl::Status WorkerHandler::Abort(const v1::AbortRequest& request) {
  RequestId id = -1;
  {
    std::lock_guard<std::mutex> lock(ids_mu_);
    auto it = client_ids_.find(request.request_id());
    if (it != client_ids_.end()) id = it->second;
  }
  if (id < 0) {
    return absl::NotFoundError(
        absl::StrCat("no running request with id '", request.request_id(), "'"));
  }
  return loop_->Abort(id);
}

v1::ModelInfo WorkerHandler::ModelInfo() const {
  const Engine& engine = loop_->engine();
  const ModelConfig& c = engine.config();
  const SparseAttentionConfig& a = engine.attention_config();
  v1::ModelInfo info;
  info.set_name(identity_.model_name);
  info.set_model_type(c.model_type);
  info.set_vocab_size(c.vocab_size);
  info.set_max_context(identity_.max_context > 0 ? identity_.max_context
                                                 : c.max_position_embeddings);
  info.set_num_layers(c.num_layers);
  info.set_hidden_size(c.hidden_size);
  info.set_num_heads(c.num_heads);
  info.set_num_kv_heads(c.num_kv_heads);
  info.set_head_dim(c.head_dim);
  info.set_backend(identity_.backend);
  info.set_role(RoleName(identity_.role));
  for (int id : c.eos_token_ids) info.add_eos_token_ids(id);
  v1::AttentionInfo* attention = info.mutable_attention();
  attention->set_streaming_heads(a.streaming_heads);
  attention->set_streaming_ratio(a.streaming_ratio);
  attention->set_sink(a.sink);
  attention->set_prefill_local(a.prefill_local);
  attention->set_decode_local(a.decode_local);
  attention->set_page_size(a.page_size);
  attention->set_logical_page_size(a.logical_page_size);
  attention->set_page_selection(a.page_selection);
  attention->set_token_budget(a.token_budget);
  attention->set_reuse_interval(a.reuse_interval);
  attention->set_page_scoring(PageScoringName(a.scoring));
  return info;
}

v1::Load WorkerHandler::Load() const {
  const LoopSnapshot s = loop_->Snapshot();
  v1::Load load;
  load.set_running(static_cast<int32_t>(s.scheduler.running));
  load.set_waiting(static_cast<int32_t>(s.scheduler.waiting));
  load.set_swapped(static_cast<int32_t>(s.scheduler.swapped));
  load.mutable_dense()->set_used_pages(s.kv.dense_used);
  load.mutable_dense()->set_cached_pages(s.kv.dense_cached);
  load.mutable_dense()->set_total_pages(s.kv.dense_total);
  load.mutable_streaming()->set_used_pages(s.kv.streaming_used);
  load.mutable_streaming()->set_cached_pages(s.kv.streaming_cached);
  load.mutable_streaming()->set_total_pages(s.kv.streaming_total);
  const double total = double(s.kv.dense_total + s.kv.streaming_total);
  load.set_kv_cache_usage_ratio(total > 0 ? (s.kv.dense_used + s.kv.streaming_used) / total : 0);
  load.set_draining(draining());
  load.set_role(RoleName(identity_.role));
  return load;
}

bool WorkerHandler::Idle() const {
  // Asked on the engine thread: the published snapshot may predate work just posted. A
  // stopped loop runs nothing any more.
  return loop_
      ->Run<absl::StatusOr<bool>>([this]() -> absl::StatusOr<bool> {
        const Scheduler& scheduler = loop_->scheduler();
        return scheduler.num_live() == 0 && scheduler.num_leased() == 0 &&
               scheduler.num_reservations() == 0;
      })
      .value_or(true);
}

v1::DrainResponse WorkerHandler::Drain() {
  loop_->scheduler().SetDraining(true);
  const LoopSnapshot s = loop_->Snapshot();
  v1::DrainResponse response;
  response.set_running(static_cast<int32_t>(s.scheduler.running));
  response.set_waiting(static_cast<int32_t>(s.scheduler.waiting));
  return response;
}

}  // namespace lserve
