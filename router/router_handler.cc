#include "router/router_handler.h"

#include <algorithm>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "net/generation_defaults.h"
#include "router/router_run.h"

namespace lserve {

using Clock = std::chrono::steady_clock;

bool IsRequestError(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kUnimplemented:
    case absl::StatusCode::kAlreadyExists:
      return true;
    default:
      return false;
  }
}

RouterHandler::RouterHandler(WorkerRegistry* registry, std::unique_ptr<RoutingPolicy> prefill,
                             std::unique_ptr<RoutingPolicy> decode, RouterOptions options,
                             RouterMetrics* metrics)
    : registry_(registry),
      prefill_policy_(std::move(prefill)),
      decode_policy_(std::move(decode)),
      options_(options),
      metrics_(metrics) {}

absl::Status RouterHandler::Validate(const v1::GenerateRequest& r) const {
  if (!r.prompt_text().empty()) {
    return absl::InvalidArgumentError(
        "text prompts need the model's tokenizer, which lserve does not serve yet: send "
        "prompt_token_ids");
  }
  if (r.prompt_token_ids().empty()) return absl::InvalidArgumentError("the prompt is empty");
  if (options_.max_prompt_tokens > 0 && r.prompt_token_ids_size() > options_.max_prompt_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("prompt of ", r.prompt_token_ids_size(),
                                                   " tokens exceeds this router's limit of ",
                                                   options_.max_prompt_tokens));
  }
  if (r.sampling().max_tokens() < 0 ||
      (options_.max_tokens > 0 && r.sampling().max_tokens() > options_.max_tokens)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_tokens must be in [1, ", options_.max_tokens > 0 ? options_.max_tokens : 1 << 30,
        "], got ", r.sampling().max_tokens()));
  }
  return absl::OkStatus();
}

absl::Status RouterHandler::Admit(Deadline deadline) {
  std::unique_lock<std::mutex> lock(admission_mu_);
  if (in_flight_ < options_.max_in_flight) {
    ++in_flight_;
    return absl::OkStatus();
  }
  if (queued_ >= options_.max_queue) {
    return absl::ResourceExhaustedError(absl::StrCat("the router is at capacity (", in_flight_,
                                                     " requests in flight, ", queued_,
                                                     " queued); retry in about a second"));
  }
  ++queued_;
  const bool admitted = admission_cv_.wait_until(
      lock, deadline, [this] { return in_flight_ < options_.max_in_flight; });
  --queued_;
  if (!admitted) return absl::DeadlineExceededError("the deadline passed in the router's queue");
  ++in_flight_;
  return absl::OkStatus();
}

void RouterHandler::Leave() {
  {
    std::lock_guard<std::mutex> lock(admission_mu_);
    --in_flight_;
  }
  admission_cv_.notify_one();
}

void RouterHandler::Emit(Run& run, const v1::GenerateResponse& response) {
  const Clock::time_point now = Clock::now();
  if (response.tokens_size() > 0) {
    for (const v1::GeneratedToken& token : response.tokens())
      run.emitted.push_back(token.token_id());
    if (metrics_ != nullptr) {
      // Tokens arriving together share the gap since the previous message.
      const bool first = run.first_token == Clock::time_point();
      const int gaps = response.tokens_size() - (first ? 1 : 0);
      if (first) {
        metrics_->TimeToFirstToken(std::chrono::duration<double>(now - run.arrival).count());
      }
      const double gap =
          std::chrono::duration<double>(now - (first ? now : run.last_token)).count();
      for (int i = 0; i < gaps; ++i) metrics_->InterTokenLatency(gap / gaps);
    }
    if (run.first_token == Clock::time_point()) run.first_token = now;
    run.last_token = now;
    v1::GenerateResponse forward;
    forward.set_request_id(run.original.request_id());
    *forward.mutable_tokens() = response.tokens();
    (*run.sink)(forward, false, absl::OkStatus());
  }
  if (response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED) {
    run.finished = true;
    run.reason = response.finish_reason();
    run.worker_timings = response.timings();
  }
}

void RouterHandler::Generate(const v1::GenerateRequest& request, Deadline deadline,
                             const net::GenerateSink& sink, Cancellation* cancel) {
  Run run;
  run.original = request;
  if (request.sampling().max_tokens() == 0) {
    run.original.mutable_sampling()->set_max_tokens(net::kDefaultMaxTokens);
  }
  run.deadline = deadline;
  run.sink = &sink;
  run.cancel = cancel;
  run.arrival = Clock::now();
  absl::Status status = Validate(request);
  if (status.ok()) status = Admit(deadline);
  const bool admitted = status.ok();
  run.admitted = Clock::now();
  const std::string& id = request.request_id();
  if (status.ok() && !id.empty()) {
    std::lock_guard<std::mutex> lock(ids_mu_);
    if (!live_.emplace(id, cancel).second) {
      status = absl::AlreadyExistsError(absl::StrCat("a request with id '", id, "' is running"));
    }
  }
  const bool registered = status.ok() && !id.empty();
  // The client's cancel reaches the call in progress.
  cancel->SetHook([&run] {
    std::lock_guard<std::mutex> lock(run.attempt_mu);
    if (run.attempt != nullptr) run.attempt->Cancel();
  });
  if (status.ok()) status = Execute(run);
  cancel->Clear();
  if (registered) {
    std::lock_guard<std::mutex> lock(ids_mu_);
    live_.erase(id);
  }
  if (admitted) Leave();
  const Clock::time_point end = Clock::now();
  if (metrics_ != nullptr) {
    metrics_->RequestFinished(status);
    if (status.ok())
      metrics_->RequestLatency(std::chrono::duration<double>(end - run.arrival).count());
  }
  if (!status.ok()) {
    sink(v1::GenerateResponse(), true, status);
    return;
  }
  v1::GenerateResponse final;
  final.set_request_id(id);
  final.set_finish_reason(run.reason);
  v1::Timings* t = final.mutable_timings();
  *t = run.worker_timings;
  t->set_queue_s(std::chrono::duration<double>(run.admitted - run.arrival).count());
  if (run.first_token != Clock::time_point()) {
    t->set_time_to_first_token_s(
        std::chrono::duration<double>(run.first_token - run.arrival).count());
  }
  t->set_total_s(std::chrono::duration<double>(end - run.arrival).count());
  t->set_prompt_tokens(request.prompt_token_ids_size());
  if (run.handed_off) {
    t->set_cached_prompt_tokens(run.prefill_timings.cached_prompt_tokens());
    t->set_prefill_tokens(run.prefill_timings.prefill_tokens());
  }
  t->set_generated_tokens(static_cast<int64_t>(run.emitted.size()));
  sink(final, true, absl::OkStatus());
}

absl::Status RouterHandler::Execute(Run& run) {
  absl::Status last = absl::UnavailableError("no attempt was made");
  std::chrono::milliseconds backoff = options_.retry_backoff;
  for (int attempt = 0; attempt < options_.max_attempts; ++attempt) {
    if (run.cancel->cancelled()) return absl::CancelledError("the client cancelled");
    if (attempt > 0) {
      if (metrics_ != nullptr) metrics_->Retry(absl::StatusCodeToString(last.code()));
      const auto wake =
          std::min<Deadline>(run.deadline, std::chrono::system_clock::now() + backoff);
      std::this_thread::sleep_until(wake);
      backoff *= 2;
    }
    if (std::chrono::system_clock::now() >= run.deadline) {
      return absl::DeadlineExceededError("the request's deadline passed");
    }
    if (run.Current().sampling().max_tokens() == 0 && !run.emitted.empty()) {
      run.finished = true;
      run.reason = v1::FINISH_REASON_LENGTH;
      return absl::OkStatus();
    }
    std::shared_ptr<WorkerState> decode = Pick(run, Pool::kDecode);
    if (decode == nullptr) {
      last = absl::UnavailableError("no healthy decode worker");
      continue;
    }
    std::shared_ptr<WorkerState> prefill;
    if (run.emitted.empty() &&
        run.original.prompt_token_ids_size() >= options_.disaggregation_min_prompt_tokens) {
      prefill = Pick(run, Pool::kPrefill, decode->address);  // a prefill worker other than D
    }
    last = prefill != nullptr ? Disaggregated(run, *decode, *prefill) : Unified(run, *decode);
    if (last.ok()) {
      if (!run.finished) return absl::InternalError("the worker ended the stream without a result");
      return last;
    }
    if (run.cancel->cancelled()) return absl::CancelledError("the client cancelled");
    if (IsRequestError(last)) return last;
    LOG(Warning) << "request '" << run.original.request_id() << "' attempt " << attempt + 1
                 << " failed: " << last << (run.emitted.empty() ? "" : "; resuming");
  }
  return absl::Status(last.code(),
                      absl::StrCat("after ", options_.max_attempts, " attempts: ", last.message()));
}

std::shared_ptr<WorkerState> RouterHandler::Pick(Run& run, Pool pool, const std::string& never) {
  std::vector<std::string> exclude = run.exclude;
  if (!never.empty()) exclude.push_back(never);
  std::vector<std::shared_ptr<WorkerState>> candidates = registry_->Candidates(pool, exclude);
  // Decode workers that failed this request are avoided, not banned: when nothing else
  // is left they get another chance (the attempts are bounded). Without a prefill worker,
  // the decode worker prefills itself.
  if (candidates.empty() && pool == Pool::kDecode && !run.exclude.empty()) {
    candidates = registry_->Candidates(
        pool, never.empty() ? std::vector<std::string>{} : std::vector<std::string>{never});
  }
  RoutingPolicy* policy = pool == Pool::kDecode ? decode_policy_.get() : prefill_policy_.get();
  const RouteContext context{{run.original.prompt_token_ids().data(),
                              static_cast<size_t>(run.original.prompt_token_ids_size())}};
  while (!candidates.empty()) {
    std::shared_ptr<WorkerState> worker = policy->Pick(candidates, context);
    // A half-open breaker admits one trial at a time.
    if (worker->breaker.Allow()) {
      if (metrics_ != nullptr) {
        metrics_->Routed(policy->name(), pool == Pool::kDecode ? "decode" : "prefill");
        metrics_->WatchWorker(worker->address);
      }
      return worker;
    }
    candidates.erase(std::find(candidates.begin(), candidates.end(), worker));
  }
  return nullptr;
}

absl::Status RouterHandler::Abort(const std::string& request_id) {
  std::lock_guard<std::mutex> lock(ids_mu_);
  auto it = live_.find(request_id);
  if (it == live_.end()) {
    return absl::NotFoundError(absl::StrCat("no running request with id '", request_id, "'"));
  }
  it->second->Cancel();
  return absl::OkStatus();
}

absl::StatusOr<v1::ModelInfo> RouterHandler::ModelInfo() {
  absl::Status last = absl::UnavailableError("no healthy worker");
  for (Pool pool : {Pool::kDecode, Pool::kPrefill}) {
    for (const auto& worker : registry_->Candidates(pool, {})) {
      auto info =
          worker->client->GetModelInfo(std::chrono::system_clock::now() + std::chrono::seconds(5));
      if (info.ok()) {
        info->set_role("router");
        return info;
      }
      last = info.status();
    }
  }
  return last;
}

v1::Load RouterHandler::Load() {
  v1::Load load;
  load.set_role("router");
  int64_t used = 0, total = 0;
  for (const auto& worker : registry_->All()) {
    if (!worker->healthy) continue;
    const v1::Load w = worker->load();
    load.set_running(load.running() + w.running());
    load.set_waiting(load.waiting() + w.waiting());
    load.set_swapped(load.swapped() + w.swapped());
    for (auto [out, in] : {std::pair{load.mutable_dense(), &w.dense()},
                           std::pair{load.mutable_streaming(), &w.streaming()}}) {
      out->set_used_pages(out->used_pages() + in->used_pages());
      out->set_cached_pages(out->cached_pages() + in->cached_pages());
      out->set_total_pages(out->total_pages() + in->total_pages());
      used += in->used_pages();
      total += in->total_pages();
    }
  }
  {
    std::lock_guard<std::mutex> lock(admission_mu_);
    load.set_waiting(load.waiting() + queued_);
  }
  load.set_kv_cache_usage_ratio(total > 0 ? double(used) / total : 0.0);
  return load;
}

}  // namespace lserve
