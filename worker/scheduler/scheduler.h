// The request scheduler (DESIGN.md §4): continuous batching of prefill chunks and decode
// tokens under a per-step token budget, admission by KV pages of both pools, preemption
// (recompute, or swap through KV export) of the lowest-priority newest request when pages
// run out, priorities, deadlines, cancellation, a bounded waiting queue and prefix caching.
//
// Submit and Abort are safe from any thread; Step runs on one engine thread and returns
// the events of the step.
#ifndef LSERVE_WORKER_SCHEDULER_SCHEDULER_H_
#define LSERVE_WORKER_SCHEDULER_SCHEDULER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine.h"
#include "worker/scheduler/kv_capacity.h"
#include "worker/scheduler/request.h"

namespace lserve {

enum class PreemptionMode { kRecompute, kSwap };

struct SchedulerOptions {
  int64_t max_step_tokens = 2048;  // tokens per engine step, all requests together
  int64_t prefill_chunk = 0;       // prompt tokens per request per step; 0: up to the budget
  int max_running = 8;             // requests holding KV at once
  int max_waiting = 1024;          // queued requests; beyond it Submit is RESOURCE_EXHAUSTED
  PreemptionMode preemption = PreemptionMode::kRecompute;
  int64_t max_swap_bytes = int64_t{1} << 30;  // host memory for swapped KV; beyond it, recompute
};

absl::Status ValidateSchedulerOptions(const SchedulerOptions& options);

struct SchedulerStats {
  int64_t steps = 0;
  int64_t step_tokens = 0;
  int64_t prefill_tokens = 0;
  int64_t decode_tokens = 0;
  int64_t preemptions = 0;  // recomputed plus swapped out
  int64_t swaps_out = 0;
  int64_t swaps_in = 0;
  int64_t finished = 0;
  double engine_seconds = 0.0;    // inside Engine::Step
  double schedule_seconds = 0.0;  // the rest of Step: bookkeeping, admission, events
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t swapped = 0;
};

class Scheduler {
 public:
  // `engine` (and `capacity`, which defaults to the engine's page tables) must outlive it.
  static absl::StatusOr<std::unique_ptr<Scheduler>> Create(Engine* engine,
                                                           const SchedulerOptions& options,
                                                           const KvCapacity* capacity = nullptr);
  ~Scheduler();

  // Queues a request. INVALID_ARGUMENT / OUT_OF_RANGE for bad requests (nothing queued),
  // RESOURCE_EXHAUSTED when the waiting queue is full or the request could never fit.
  absl::StatusOr<RequestId> Submit(GenerationRequest request);
  // Cancels a live request; its pages are freed at the start of the next Step, which
  // reports it finished with CANCELLED. NOT_FOUND when unknown or already finished.
  absl::Status Abort(RequestId id);
  // Whether any request is live (queued, running or swapped), or work was posted.
  bool HasWork() const { return live_.load() > 0 || posted_.load() > 0; }
  int64_t num_live() const { return live_.load(); }
  // Runs fn on the engine thread at the start of the next Step (any thread).
  void Post(std::function<void()> fn);
  // Destroys the posted functions that have not run (once nothing will step any more).
  void DropPosted();
  // A draining scheduler refuses new requests with UNAVAILABLE (any thread).
  void SetDraining(bool draining) { draining_ = draining; }
  bool draining() const { return draining_.load(); }

  // The disaggregated hand-off (DESIGN.md §1). Engine thread only (from Post).
  // Decode side: reserves pages for prompt_tokens + max_tokens; the reservation's id also
  // names the request that will decode from it.
  absl::StatusOr<RequestId> Reserve(int64_t prompt_tokens, int max_tokens,
                                    std::chrono::milliseconds lease);
  // Decode side: the reservation receives a prefilled sequence's KV.
  absl::Status FillReservation(RequestId reservation, const KvSnapshot& snapshot);
  // Decode side: continues `request` from a filled reservation whose prompt's first
  // generated token is `first`; events follow under the reservation's id.
  absl::Status SubmitReserved(RequestId reservation, GenerationRequest request,
                              const GeneratedToken& first);
  absl::Status CancelReservation(RequestId reservation);
  // Decode side, for a device transport: the reservation takes pages for `manifest` (a
  // snapshot without bytes) that the transport then writes; it neither expires nor frees
  // them until EndReceive says whether the bytes arrived (a cancel meanwhile waits too).
  absl::StatusOr<KvPlacement> ClaimReservation(RequestId reservation, const KvSnapshot& manifest);
  absl::Status EndReceive(RequestId reservation, bool received);
  // Prefill side: the KV a keep_kv request left, and its release.
  absl::StatusOr<KvSnapshot> ExportLeased(RequestId handle) const;
  absl::Status ReleaseLeased(RequestId handle);
  // Prefill side, for a device transport: the leased KV's pages, which neither expire
  // nor are freed (a release meanwhile waits) until EndLeasedExport, which also ends the
  // pin of a request's KvStreamOut::Start.
  absl::StatusOr<KvPageExport> BeginLeasedExport(RequestId handle);
  void EndLeasedExport(RequestId handle);
  int64_t num_leased() const { return static_cast<int64_t>(leased_.size()); }
  int64_t num_reservations() const { return static_cast<int64_t>(reservations_.size()); }

  // One engine step: admits, preempts, runs the batch, and reports what happened.
  std::vector<RequestEvent> Step();

  SchedulerStats stats() const;
  const SchedulerOptions& options() const { return options_; }

 private:
  struct State;
  struct Planned;
  Scheduler(Engine* engine, const SchedulerOptions& options, const KvCapacity* capacity);

  absl::Status ValidateRequest(const GenerationRequest& request) const;
  void DrainInbox();
  void Finish(State& state, FinishReason reason, absl::Status status);
  RequestEvent& EventFor(State& state);
  void InsertWaiting(State* state);
  void Preempt(State& victim);
  State* PickVictim();
  // Batch building (scheduler_batch.cc).
  std::vector<Planned> PlanStep();
  bool TryAdd(State& state, std::vector<Planned>& plan, int64_t& budget);
  bool Admit(State& state);
  void ApplyOutputs(const std::vector<Planned>& plan, const std::vector<StepOutput>& outputs);
  // Starts the KV streams of the plan's last prompt chunks (inside Engine::Step).
  void StartStreams(const std::vector<Planned>& plan, std::shared_ptr<QueueMarks> marks);
  // Hand-off bookkeeping (scheduler_handoff.cc).
  void RunPosted();
  void ExpireLeases(SteadyClock::time_point now);
  PageCounts ReservedPages() const;
  // Fills an unfilled reservation for `length` tokens through `import`, which takes the
  // pages and says how many.
  absl::Status ImportIntoReservation(RequestId id, int64_t length,
                                     const std::function<absl::StatusOr<PageCounts>()>& import);
  // Pages admission may use: available minus those reservations hold back.
  PageCounts AvailableNow() const;

  Engine* engine_;
  SchedulerOptions options_;
  std::unique_ptr<KvCapacity> own_capacity_;
  const KvCapacity* capacity_;
  int64_t max_chunk_tokens_ = 0;

  // Cross-thread state.
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<State>> inbox_;
  std::vector<RequestId> aborts_;
  std::unordered_map<RequestId, bool> live_ids_;  // submitted and not yet reported finished
  RequestId next_id_ = 1;
  int queued_ = 0;  // inbox plus waiting, for the bound
  std::atomic<int64_t> live_{0};
  std::vector<std::function<void()>> posted_fns_;
  std::atomic<int64_t> posted_{0};
  std::atomic<bool> draining_{false};

  // Engine-thread state.
  std::unordered_map<RequestId, std::unique_ptr<State>> states_;
  std::vector<State*> waiting_;  // best first: priority desc, arrival asc
  std::vector<State*> running_;  // admission order
  std::vector<State*> swapped_;
  int64_t swap_bytes_ = 0;
  uint64_t order_ = 0;
  std::map<RequestId, RequestEvent> events_;
  struct Reservation {
    PageCounts pages;  // still held back from admission
    int64_t prompt_tokens = 0;
    int max_tokens = 0;
    bool filled = false;     // the store holds its sequence
    bool receiving = false;  // a device transport is writing the sequence's pages
    bool cancel_pending = false;
    SteadyClock::time_point expiry;
  };
  std::unordered_map<RequestId, Reservation> reservations_;
  struct Lease {
    SteadyClock::time_point expiry;
    int exports = 0;  // device transfers reading the pages
    bool release_pending = false;
  };
  std::unordered_map<RequestId, Lease> leased_;
  // Pins of KvStreamOut::Start on requests still running; they become the lease's.
  std::unordered_map<RequestId, int> stream_pins_;
  // Pages promised to the inputs planned so far in this step, and what was available.
  PageCounts planned_;
  PageCounts available_;
  SchedulerStats stats_;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SCHEDULER_SCHEDULER_H_
