#include "router/worker_client.h"

namespace lserve {

void Cancellation::Cancel() {
  // The hook runs under the lock, so Clear() cannot return while it runs: the call it
  // cancels outlives it.
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_ = true;
  if (hook_) hook_();
}

bool Cancellation::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

void Cancellation::SetHook(std::function<void()> hook) {
  std::lock_guard<std::mutex> lock(mu_);
  hook_ = std::move(hook);
  if (cancelled_ && hook_) hook_();
}

void Cancellation::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  hook_ = nullptr;
}

}  // namespace lserve
