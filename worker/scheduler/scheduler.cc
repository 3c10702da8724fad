#include "worker/scheduler/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "worker/scheduler/scheduler_state.h"

namespace lserve {
namespace {

double Seconds(SteadyClock::time_point from, SteadyClock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

}  // namespace

absl::Status ValidateSchedulerOptions(const SchedulerOptions& o) {
  if (o.max_step_tokens <= 0 || o.max_running <= 0 || o.prefill_chunk < 0 || o.max_waiting <= 0 ||
      o.max_swap_bytes < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scheduler options: max_step_tokens (", o.max_step_tokens, "), max_running (",
        o.max_running, ") and max_waiting (", o.max_waiting, ") must be positive, prefill_chunk (",
        o.prefill_chunk, ") and max_swap_bytes (", o.max_swap_bytes, ") >= 0"));
  }
  return absl::OkStatus();
}

Scheduler::Scheduler(Engine* engine, const SchedulerOptions& options, const KvCapacity* capacity)
    : engine_(engine), options_(options), capacity_(capacity) {
  if (capacity_ == nullptr) {
    own_capacity_ = std::make_unique<PageTablesCapacity>(&engine->kv_store().tables());
    capacity_ = own_capacity_.get();
  }
  max_chunk_tokens_ = engine->kv_store().config().max_chunk_tokens;
}

Scheduler::~Scheduler() {
  for (State* state : running_) (void)engine_->FreeSequence(state->id);
  for (State* state : swapped_) engine_->ForgetSwapped(state->id);
  for (const auto& [handle, lease] : leased_) (void)engine_->FreeSequence(handle);
  for (const auto& [id, reservation] : reservations_) {
    if (reservation.filled) (void)engine_->FreeSequence(id);
  }
}

absl::StatusOr<std::unique_ptr<Scheduler>> Scheduler::Create(Engine* engine,
                                                             const SchedulerOptions& options,
                                                             const KvCapacity* capacity) {
  if (absl::Status status = ValidateSchedulerOptions(options); !status.ok()) return status;
  return std::unique_ptr<Scheduler>(new Scheduler(engine, options, capacity));
}

absl::Status Scheduler::ValidateRequest(const GenerationRequest& request) const {
  const ModelConfig& config = engine_->config();
  if (request.prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  for (int32_t token : request.prompt) {
    if (token < 0 || token >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt token id ", token, " is outside the vocabulary [0, ", config.vocab_size, ")"));
    }
  }
  if (absl::Status status = ValidateSamplingParams(request.sampling, config.vocab_size);
      !status.ok()) {
    return status;
  }
  const int64_t needed = static_cast<int64_t>(request.prompt.size()) + request.sampling.max_tokens;
  if (needed > config.max_position_embeddings) {
    return absl::OutOfRangeError(absl::StrCat(
        "prompt (", request.prompt.size(), " tokens) + max_tokens (", request.sampling.max_tokens,
        ") exceeds the context length ", config.max_position_embeddings));
  }
  const PageCounts pages = capacity_->MaxPagesFor(needed);
  const PageCounts total = capacity_->Capacity();
  if (!Fits(pages, total)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("request needs ", pages.dense, " dense and ", pages.streaming,
                     " streaming KV pages, the cache has ", total.dense, " and ", total.streaming));
  }
  return absl::OkStatus();
}

absl::StatusOr<RequestId> Scheduler::Submit(GenerationRequest request) {
  if (draining_) return absl::UnavailableError("the worker is draining: no new requests");
  if (absl::Status status = ValidateRequest(request); !status.ok()) return status;
  auto state = std::make_unique<State>();
  state->arrival = SteadyClock::now();
  state->context = request.prompt;
  state->timings.prompt_tokens = static_cast<int64_t>(request.prompt.size());
  state->request = std::move(request);
  std::lock_guard<std::mutex> lock(mu_);
  if (queued_ >= options_.max_waiting) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the waiting queue is full (", options_.max_waiting, " requests); retry later"));
  }
  state->id = next_id_++;
  const RequestId id = state->id;
  live_ids_[id] = true;
  ++queued_;
  ++live_;
  inbox_.push_back(std::move(state));
  return id;
}

absl::Status Scheduler::Abort(RequestId id) {
  std::lock_guard<std::mutex> lock(mu_);
  if (live_ids_.count(id) == 0) {
    return absl::NotFoundError(absl::StrCat("request ", id, " is not running or queued"));
  }
  aborts_.push_back(id);
  return absl::OkStatus();
}

void Scheduler::DrainInbox() {
  std::vector<std::unique_ptr<State>> inbox;
  std::vector<RequestId> aborts;
  {
    std::lock_guard<std::mutex> lock(mu_);
    inbox.swap(inbox_);
    aborts.swap(aborts_);
  }
  for (auto& state : inbox) {
    state->order = order_++;
    State* raw = state.get();
    states_.emplace(state->id, std::move(state));
    InsertWaiting(raw);
  }
  for (RequestId id : aborts) {
    auto it = states_.find(id);
    if (it != states_.end()) it->second->abort = true;
  }
}

void Scheduler::InsertWaiting(State* state) {
  state->where = State::Where::kWaiting;
  auto it = std::find_if(waiting_.begin(), waiting_.end(),
                         [&](const State* other) { return state->Before(*other); });
  waiting_.insert(it, state);
}

RequestEvent& Scheduler::EventFor(State& state) {
  RequestEvent& event = events_[state.id];
  event.id = state.id;
  return event;
}

void Scheduler::Finish(State& state, FinishReason reason, absl::Status status) {
  const SteadyClock::time_point now = SteadyClock::now();
  RequestEvent& event = EventFor(state);
  switch (state.where) {
    case State::Where::kRunning: {
      int pins = 0;
      if (auto pinned = stream_pins_.find(state.id); pinned != stream_pins_.end()) {
        pins = pinned->second;
        stream_pins_.erase(pinned);
      }
      if (state.request.keep_kv && status.ok()) {
        // The hand-off reads the KV later; it stays until released or the lease ends.
        leased_[state.id] = Lease{now + state.request.kv_lease, pins};
        event.kv_leased = true;
      } else if (pins > 0) {
        // A transfer still reads the pages: they go once it ends.
        leased_[state.id] = Lease{now + state.request.kv_lease, pins, /*release_pending=*/true};
      } else {
        CHECK(engine_->FreeSequence(state.id).ok());
      }
    }
      std::erase(running_, &state);
      break;
    case State::Where::kSwapped:
      engine_->ForgetSwapped(state.id);
      swap_bytes_ -= state.swap->bytes();
      std::erase(swapped_, &state);
      break;
    case State::Where::kWaiting:
      std::erase(waiting_, &state);
      break;
  }
  event.finished = true;
  event.finish_reason = reason;
  event.status = std::move(status);
  state.timings.total_s = Seconds(state.arrival, now);
  state.timings.generated_tokens = state.generated;
  event.timings = state.timings;
  ++stats_.finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    live_ids_.erase(state.id);
    if (state.where == State::Where::kWaiting) --queued_;
  }
  --live_;
  states_.erase(state.id);  // destroys `state`
}

Scheduler::State* Scheduler::PickVictim() {
  State* victim = nullptr;
  for (State* state : running_) {
    // Lowest priority first, the newest among equals.
    if (victim == nullptr || state->request.priority < victim->request.priority ||
        (state->request.priority == victim->request.priority && state->order > victim->order)) {
      victim = state;
    }
  }
  return victim;
}

void Scheduler::Preempt(State& victim) {
  ++stats_.preemptions;
  ++victim.timings.preemptions;
  std::erase(running_, &victim);
  if (options_.preemption == PreemptionMode::kSwap && victim.decoding()) {
    absl::StatusOr<KvSnapshot> snapshot = engine_->SwapOut(victim.id);
    if (snapshot.ok() && swap_bytes_ + snapshot->bytes() <= options_.max_swap_bytes) {
      swap_bytes_ += snapshot->bytes();
      victim.swap = *std::move(snapshot);
      victim.where = State::Where::kSwapped;
      swapped_.push_back(&victim);
      ++stats_.swaps_out;
      return;
    }
    // No room to keep it: recompute later. SwapOut already freed the pages.
    engine_->ForgetSwapped(victim.id);
    if (!snapshot.ok()) LOG(Warning) << "swap-out failed, recomputing: " << snapshot.status();
  } else {
    CHECK(engine_->FreeSequence(victim.id).ok());
  }
  victim.computed = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++queued_;
  }
  InsertWaiting(&victim);
}

std::vector<RequestEvent> Scheduler::Step() {
  const SteadyClock::time_point step_start = SteadyClock::now();
  double engine_seconds = 0.0;
  events_.clear();
  RunPosted();
  DrainInbox();
  const SteadyClock::time_point now = SteadyClock::now();
  ExpireLeases(now);
  std::vector<State*> done;
  for (auto& [id, state] : states_) {
    if (state->abort || (state->request.deadline && *state->request.deadline <= now)) {
      done.push_back(state.get());
    }
  }
  for (State* state : done) {
    if (state->abort) {
      Finish(*state, FinishReason::kAborted, absl::CancelledError("the request was aborted"));
    } else {
      Finish(*state, FinishReason::kDeadline,
             absl::DeadlineExceededError("the request's deadline passed"));
    }
  }
  std::vector<Planned> plan = PlanStep();
  if (!plan.empty()) {
    std::vector<StepInput> inputs;
    for (const Planned& p : plan) inputs.push_back(p.input);
    const SteadyClock::time_point engine_start = SteadyClock::now();
    // Queue marks only for a step that computes a streamed request's last chunk.
    const bool streams =
        std::any_of(plan.begin(), plan.end(), [](const Planned& p) { return p.StreamsKv(); });
    absl::StatusOr<std::vector<StepOutput>> outputs =
        streams ? engine_->Step(inputs,
                                [&](std::shared_ptr<QueueMarks> marks) {
                                  StartStreams(plan, std::move(marks));
                                })
                : engine_->Step(inputs);
    engine_seconds = Seconds(engine_start, SteadyClock::now());
    ++stats_.steps;
    if (!outputs.ok()) {
      // A failed step advances nothing: fail its requests rather than retry forever.
      LOG(Error) << "engine step failed: " << outputs.status();
      for (const Planned& p : plan) Finish(*p.state, FinishReason::kError, outputs.status());
    } else {
      ApplyOutputs(plan, *outputs);
    }
  }
  std::vector<RequestEvent> events;
  for (auto& [id, event] : events_) events.push_back(std::move(event));
  events_.clear();
  stats_.engine_seconds += engine_seconds;
  stats_.schedule_seconds += Seconds(step_start, SteadyClock::now()) - engine_seconds;
  return events;
}

SchedulerStats Scheduler::stats() const {
  SchedulerStats stats = stats_;
  stats.running = static_cast<int64_t>(running_.size());
  stats.waiting = static_cast<int64_t>(waiting_.size());
  stats.swapped = static_cast<int64_t>(swapped_.size());
  return stats;
}

}  // namespace lserve
