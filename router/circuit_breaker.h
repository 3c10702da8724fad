// A per-worker circuit breaker: after `failures` consecutive failures the worker gets no
// requests for `cooldown`; then one trial request is let through (half-open), and its
// outcome closes or reopens the breaker.
#ifndef LSERVE_ROUTER_CIRCUIT_BREAKER_H_
#define LSERVE_ROUTER_CIRCUIT_BREAKER_H_

#include <chrono>
#include <mutex>

namespace lserve {

class CircuitBreaker {
 public:
  enum class State { kClosed, kOpen, kHalfOpen };
  using Clock = std::chrono::steady_clock;

  CircuitBreaker(int failures, Clock::duration cooldown)
      : threshold_(failures), cooldown_(cooldown) {}

  // Whether a request may go to the worker now; in half-open only one at a time.
  bool Allow(Clock::time_point now = Clock::now());
  void OnSuccess();
  void OnFailure(Clock::time_point now = Clock::now());
  State state(Clock::time_point now = Clock::now()) const;

 private:
  const int threshold_;
  const Clock::duration cooldown_;
  mutable std::mutex mu_;
  int consecutive_failures_ = 0;
  bool open_ = false;
  bool trial_in_flight_ = false;
  Clock::time_point opened_at_;
  Clock::time_point trial_started_;
};

const char* CircuitStateName(CircuitBreaker::State state);

}  // namespace lserve

#endif  // LSERVE_ROUTER_CIRCUIT_BREAKER_H_
