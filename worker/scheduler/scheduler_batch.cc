// Building one step's batch: decode tokens first (they keep inter-token latency low),
// with preemption until they fit; swapped requests back in; prefill chunks of running
// requests; then admission from the waiting queue, all within the token budget and the
// pages available.
#include <algorithm>
#include <span>

#include "common/logging.h"
#include "worker/scheduler/scheduler.h"
#include "worker/scheduler/scheduler_state.h"

namespace lserve {
namespace {

PageCounts Plus(PageCounts a, PageCounts b) {
  return {a.dense + b.dense, a.streaming + b.streaming};
}

}  // namespace

bool Scheduler::TryAdd(State& state, std::vector<Planned>& plan, int64_t& budget) {
  Planned planned;
  planned.state = &state;
  StepInput& input = planned.input;
  input.seq = state.id;
  int64_t n = 1;
  if (state.decoding()) {
    input.tokens = {state.context.back()};
    input.phase = StepPhase::kDecode;
  } else {
    n = std::min(state.remaining(), budget);
    if (options_.prefill_chunk > 0) n = std::min(n, options_.prefill_chunk);
    n = std::min(n, max_chunk_tokens_);
    input.phase = StepPhase::kPrefill;
  }
  if (n <= 0 || budget < n) return false;
  // Shrink a prefill chunk until its pages fit; a decode token fits or waits.
  PageCounts need;
  while (true) {
    if (input.phase == StepPhase::kPrefill) {
      input.tokens.assign(state.context.begin() + state.computed,
                          state.context.begin() + state.computed + n);
    }
    absl::StatusOr<PageCounts> needed = engine_->PagesNeeded({input});
    CHECK(needed.ok()) << needed.status();
    need = *needed;
    if (Fits(Plus(planned_, need), available_)) break;
    if (input.phase == StepPhase::kDecode || n == 1) return false;
    n /= 2;
  }
  input.sample = state.computed + n == static_cast<int64_t>(state.context.size());
  if (input.sample) {
    const SamplingParams& s = state.request.sampling;
    input.sampling = {s.temperature,
                      s.top_k,
                      s.top_p,
                      s.seed,
                      s.draw_offset + static_cast<uint64_t>(state.generated),
                      s.logprobs};
  }
  planned_ = Plus(planned_, need);
  budget -= n;
  if (!state.first_scheduled) {
    state.first_scheduled = SteadyClock::now();
    state.timings.queue_s =
        std::chrono::duration<double>(*state.first_scheduled - state.arrival).count();
  }
  plan.push_back(std::move(planned));
  return true;
}

bool Scheduler::Admit(State& state) {
  std::erase(waiting_, &state);
  {
    std::lock_guard<std::mutex> lock(mu_);
    --queued_;
  }
  CHECK(engine_->AddSequence(state.id).ok());
  state.computed = 0;
  absl::StatusOr<int64_t> cached = engine_->AttachCachedPrefix(state.id, state.context);
  if (cached.ok()) {
    state.computed = *cached;
    state.timings.cached_prompt_tokens +=
        std::min<int64_t>(*cached, static_cast<int64_t>(state.request.prompt.size()));
  } else {
    LOG(Warning) << "prefix cache: " << cached.status();
  }
  state.where = State::Where::kRunning;
  running_.push_back(&state);
  // Sharing cached pages takes them out of the reclaimable count.
  available_ = AvailableNow();
  return true;
}

std::vector<Scheduler::Planned> Scheduler::PlanStep() {
  std::vector<Planned> plan;
  int64_t budget = options_.max_step_tokens;
  bool preempted = false;
  // A waiting request outranks running ones of lower priority: they make room for it.
  while (!waiting_.empty()) {
    const State& best = *waiting_.front();
    State* victim = PickVictim();
    if (victim == nullptr || victim->request.priority >= best.request.priority) break;
    const PageCounts estimate =
        capacity_->MaxPagesFor(static_cast<int64_t>(best.context.size()) + 1);
    if (static_cast<int>(running_.size()) < options_.max_running &&
        Fits(estimate, AvailableNow())) {
      break;
    }
    Preempt(*victim);
  }
  // Every decoding request gets its token, preempting the lowest-priority newest request
  // while the tokens do not fit.
  while (true) {
    std::vector<StepInput> decodes;
    for (State* state : running_) {
      if (!state->decoding()) continue;
      StepInput input;
      input.seq = state->id;
      input.tokens = {state->context.back()};
      input.phase = StepPhase::kDecode;
      decodes.push_back(std::move(input));
    }
    absl::StatusOr<PageCounts> need = engine_->PagesNeeded(decodes);
    CHECK(need.ok()) << need.status();
    if (Fits(*need, AvailableNow())) break;
    State* victim = PickVictim();
    if (victim == nullptr) break;
    Preempt(*victim);
    preempted = true;
  }
  planned_ = {};
  available_ = AvailableNow();
  std::vector<State*> order = running_;
  for (State* state : order) {
    if (state->decoding()) TryAdd(*state, plan, budget);
  }
  if (!preempted) {
    std::vector<State*> swapped = swapped_;
    std::sort(swapped.begin(), swapped.end(),
              [](const State* a, const State* b) { return a->Before(*b); });
    for (State* state : swapped) {
      if (static_cast<int>(running_.size()) >= options_.max_running || budget <= 0) break;
      const PageCounts need{state->swap->num_dense_pages + 1,
                            static_cast<int64_t>(state->swap->streaming_indices.size()) + 1};
      if (!Fits(Plus(planned_, need), available_)) break;
      if (absl::Status status = engine_->SwapIn(state->id, *state->swap); !status.ok()) {
        LOG(Warning) << "swap-in failed, recomputing: " << status;
        break;
      }
      swap_bytes_ -= state->swap->bytes();
      state->swap.reset();
      std::erase(swapped_, state);
      state->where = State::Where::kRunning;
      running_.push_back(state);
      ++stats_.swaps_in;
      available_ = AvailableNow();
      TryAdd(*state, plan, budget);
    }
  }
  for (State* state : order) {
    if (!state->decoding() && budget > 0) TryAdd(*state, plan, budget);
  }
  if (!preempted) {
    while (!waiting_.empty() && static_cast<int>(running_.size()) < options_.max_running &&
           budget > 0) {
      State* state = waiting_.front();
      // Admit only what can finish its prompt and first decode with the pages left, so a
      // newcomer does not immediately push a running request out.
      const PageCounts estimate =
          capacity_->MaxPagesFor(static_cast<int64_t>(state->context.size()) + 1);
      if (!Fits(Plus(planned_, estimate), available_)) break;
      Admit(*state);
      TryAdd(*state, plan, budget);
    }
  }
  if (plan.empty() && !running_.empty()) {
    // Nothing fits: give the pages of the lowest-priority newest request to the others.
    Preempt(*PickVictim());
  }
  return plan;
}

void Scheduler::ApplyOutputs(const std::vector<Planned>& plan,
                             const std::vector<StepOutput>& outputs) {
  const SteadyClock::time_point now = SteadyClock::now();
  for (size_t i = 0; i < plan.size(); ++i) {
    State& state = *plan[i].state;
    const StepInput& input = plan[i].input;
    const int64_t n = static_cast<int64_t>(input.tokens.size());
    state.computed += n;
    stats_.step_tokens += n;
    if (input.phase == StepPhase::kPrefill) {
      stats_.prefill_tokens += n;
      state.timings.prefill_tokens += n;
      // Only prefill-computed KV is shared: decode computes streaming heads over a
      // smaller window, so its pages would not equal a prefill of the same tokens.
      engine_->CachePrefix(state.id,
                           std::span<const int32_t>(state.context.data(), state.computed));
    } else {
      ++stats_.decode_tokens;
    }
    const StepOutput& out = outputs[i];
    if (!out.sampled) continue;
    GeneratedToken token;
    token.id = out.token;
    if (state.request.sampling.logprobs >= 0) {
      token.logprob = out.logprob;
      token.top_logprobs = out.top_logprobs;
    }
    state.context.push_back(out.token);
    ++state.generated;
    if (state.generated == 1) {
      state.timings.time_to_first_token_s =
          std::chrono::duration<double>(now - state.arrival).count();
    }
    EventFor(state).tokens.push_back(std::move(token));
    const auto& stops = state.request.sampling.stop_token_ids;
    if (std::find(stops.begin(), stops.end(), out.token) != stops.end()) {
      Finish(state, FinishReason::kStop, absl::OkStatus());
    } else if (state.generated >= state.request.sampling.max_tokens) {
      Finish(state, FinishReason::kLength, absl::OkStatus());
    }
  }
}

}  // namespace lserve
