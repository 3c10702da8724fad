#include "router/circuit_breaker.h"

namespace lserve {

bool CircuitBreaker::Allow(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!open_) return true;
  if (now - opened_at_ < cooldown_) return false;
  // Half-open: one request decides. A trial never reported (cancelled, or failed by its
  // own fault) gives way to another after a cooldown.
  if (trial_in_flight_ && now - trial_started_ < cooldown_) return false;
  trial_in_flight_ = true;
  trial_started_ = now;
  return true;
}

void CircuitBreaker::OnSuccess() {
  std::lock_guard<std::mutex> lock(mu_);
  consecutive_failures_ = 0;
  open_ = false;
  trial_in_flight_ = false;
}

void CircuitBreaker::OnFailure(Clock::time_point now) {
  std::lock_guard<std::mutex> lock(mu_);
  ++consecutive_failures_;
  if (open_ || consecutive_failures_ >= threshold_) {
    open_ = true;
    opened_at_ = now;
  }
  trial_in_flight_ = false;
}

CircuitBreaker::State CircuitBreaker::state(Clock::time_point now) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!open_) return State::kClosed;
  return now - opened_at_ < cooldown_ ? State::kOpen : State::kHalfOpen;
}

const char* CircuitStateName(CircuitBreaker::State state) {
  switch (state) {
    case CircuitBreaker::State::kClosed:
      return "closed";
    case CircuitBreaker::State::kOpen:
      return "open";
    case CircuitBreaker::State::kHalfOpen:
      return "half_open";
  }
  return "?";
}

}  // namespace lserve
