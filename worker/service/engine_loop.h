// Runs a Scheduler on its own engine thread: steps while there is work, sleeps when
// there is none, and routes each request's events to the sink registered with it.
// Transport-free: the gRPC adapter and tests drive it alike.
#ifndef LSERVE_WORKER_SERVICE_ENGINE_LOOP_H_
#define LSERVE_WORKER_SERVICE_ENGINE_LOOP_H_

#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <type_traits>
#include <unordered_map>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/engine.h"
#include "worker/scheduler/scheduler.h"

namespace lserve {

// What the loop publishes after every step, for loads, health and metrics.
struct LoopSnapshot {
  SchedulerStats scheduler;
  KvUsage kv;
  PrefixCacheStats prefix;
  AttentionStats attention;
  int64_t selection_recomputations = 0;
  int64_t selection_reuses = 0;
  int64_t leased = 0;
  int64_t reservations = 0;
};

class EngineLoop {
 public:
  // Called on the engine thread with each event of its request, in order; the last one
  // has finished set.
  using EventSink = std::function<void(const RequestEvent&)>;
  // Called on the engine thread after every engine step with its duration and the
  // snapshots from before and after it.
  using StepObserver =
      std::function<void(double seconds, const LoopSnapshot& before, const LoopSnapshot& after)>;

  EngineLoop(Engine* engine, Scheduler* scheduler, StepObserver observer = nullptr);
  ~EngineLoop();  // Stop()
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  absl::StatusOr<RequestId> Submit(GenerationRequest request, EventSink sink);
  absl::Status Abort(RequestId id) { return scheduler_->Abort(id); }
  // Runs fn on the engine thread and returns its result (never call from that thread).
  // T carries an error (a Status or StatusOr): once the loop has stopped, fn does not run
  // and the result is UNAVAILABLE.
  template <typename T>
  T Run(std::function<T()> fn);
  // Runs fn on the engine thread without waiting for it (any thread, the engine thread
  // included); once the loop has stopped it never runs.
  void Post(std::function<void()> fn) {
    scheduler_->Post(std::move(fn));
    Wake();
  }
  // The same for work that streams events afterwards: fn returns the request id whose
  // events go to sink (or an error, and then the sink is dropped).
  absl::Status RunWithSink(std::function<absl::StatusOr<RequestId>()> fn, EventSink sink);

  LoopSnapshot Snapshot() const;
  Scheduler& scheduler() { return *scheduler_; }
  const Engine& engine() const { return *engine_; }
  // Stops stepping (after the step in progress) and joins the thread. Requests still live
  // get no further events.
  void Stop();

 private:
  void Loop();
  void Wake();
  // Takes a fresh snapshot, publishes it and returns the previous one.
  LoopSnapshot Publish();

  Engine* engine_;
  Scheduler* scheduler_;
  StepObserver observer_;
  std::mutex sinks_mu_;
  std::unordered_map<RequestId, EventSink> sinks_;
  std::mutex wake_mu_;
  std::condition_variable wake_cv_;
  bool stop_ = false;
  bool woken_ = false;
  mutable std::mutex snapshot_mu_;
  LoopSnapshot snapshot_;
  std::thread thread_;
};

template <typename T>
T EngineLoop::Run(std::function<T()> fn) {
  static_assert(std::is_constructible_v<T, absl::Status>, "Run's result must carry an error");
  // Answers the caller exactly once: with fn's result, or with UNAVAILABLE when the posted
  // call is dropped unrun because the loop stopped.
  struct Answer {
    std::promise<T> promise;
    bool given = false;
    ~Answer() {
      if (!given) promise.set_value(T(absl::UnavailableError("the engine loop has stopped")));
    }
  };
  std::future<T> result;
  {
    // Under wake_mu_, so the loop either sees this call posted before it stops (and drops it
    // unrun at worst) or this call sees it stopped.
    std::lock_guard<std::mutex> lock(wake_mu_);
    if (stop_) return T(absl::UnavailableError("the engine loop has stopped"));
    // Only the posted call holds the answer, so dropping the call gives it.
    auto answer = std::make_shared<Answer>();
    result = answer->promise.get_future();
    scheduler_->Post([answer = std::move(answer), fn = std::move(fn)] {
      answer->promise.set_value(fn());
      answer->given = true;
    });
  }
  Wake();
  return result.get();
}

}  // namespace lserve

#endif  // LSERVE_WORKER_SERVICE_ENGINE_LOOP_H_
