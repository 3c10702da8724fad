#include "worker/service/engine_loop.h"

#include <chrono>
#include <utility>

#include "common/logging.h"

namespace lserve {

EngineLoop::EngineLoop(Engine* engine, Scheduler* scheduler, StepObserver observer)
    : engine_(engine), scheduler_(scheduler), observer_(std::move(observer)) {
  Publish();
  thread_ = std::thread([this] { Loop(); });
}

EngineLoop::~EngineLoop() { Stop(); }

void EngineLoop::Stop() {
  {
    std::lock_guard<std::mutex> lock(wake_mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  wake_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void EngineLoop::Wake() {
  {
    std::lock_guard<std::mutex> lock(wake_mu_);
    woken_ = true;
  }
  wake_cv_.notify_one();
}

absl::StatusOr<RequestId> EngineLoop::Submit(GenerationRequest request, EventSink sink) {
  absl::StatusOr<RequestId> id;
  {
    // Held across Submit so that events of the new request wait for its sink.
    std::lock_guard<std::mutex> lock(sinks_mu_);
    id = scheduler_->Submit(std::move(request));
    if (id.ok()) sinks_[*id] = std::move(sink);
  }
  if (id.ok()) Wake();
  return id;
}

absl::Status EngineLoop::RunWithSink(std::function<absl::StatusOr<RequestId>()> fn,
                                     EventSink sink) {
  return Run<absl::Status>([&]() -> absl::Status {
    absl::StatusOr<RequestId> id = fn();
    if (!id.ok()) return id.status();
    std::lock_guard<std::mutex> lock(sinks_mu_);
    sinks_[*id] = std::move(sink);
    return absl::OkStatus();
  });
}

LoopSnapshot EngineLoop::Publish() {
  LoopSnapshot snapshot;
  snapshot.scheduler = scheduler_->stats();
  snapshot.kv = engine_->kv_store().Usage();
  if (engine_->kv_store().prefix_cache() != nullptr) {
    snapshot.prefix = engine_->kv_store().prefix_cache()->stats();
  }
  snapshot.attention = engine_->attention_stats();
  snapshot.selection_recomputations = engine_->selection_recomputations();
  snapshot.selection_reuses = engine_->selection_reuses();
  snapshot.leased = scheduler_->num_leased();
  snapshot.reservations = scheduler_->num_reservations();
  std::lock_guard<std::mutex> lock(snapshot_mu_);
  std::swap(snapshot_, snapshot);
  return snapshot;
}

LoopSnapshot EngineLoop::Snapshot() const {
  std::lock_guard<std::mutex> lock(snapshot_mu_);
  return snapshot_;
}

void EngineLoop::Loop() {
  using Clock = std::chrono::steady_clock;
  if (absl::Status bound = engine_->backend().BindCallingThread(); !bound.ok()) {
    LOG(Error) << "engine thread: " << bound;
  }
  while (true) {
    {
      std::unique_lock<std::mutex> lock(wake_mu_);
      // Leases and reservations expire on a step too, so an idle loop still ticks.
      wake_cv_.wait_for(lock, std::chrono::milliseconds(50),
                        [&] { return stop_ || woken_ || scheduler_->HasWork(); });
      if (stop_) break;
      woken_ = false;
    }
    const Clock::time_point start = Clock::now();
    std::vector<RequestEvent> events = scheduler_->Step();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    const LoopSnapshot before = Publish();
    if (observer_) {
      const LoopSnapshot after = Snapshot();
      if (after.scheduler.steps > before.scheduler.steps) observer_(seconds, before, after);
    }
    {
      std::lock_guard<std::mutex> lock(sinks_mu_);
      for (const RequestEvent& event : events) {
        auto it = sinks_.find(event.id);
        if (it == sinks_.end()) continue;
        it->second(event);
        if (event.finished) sinks_.erase(it);
      }
    }
  }
  // Calls posted to this thread that will never run now: their waiters get UNAVAILABLE.
  scheduler_->DropPosted();
}

}  // namespace lserve
