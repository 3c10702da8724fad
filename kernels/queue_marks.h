// Points in a backend's work queue, one per layer of a step, that another thread can
// follow: the engine places mark i once layer i's KV appends are queued, and a device
// transport sends that layer's pages when the mark has passed, while the rest of the
// step still computes. No CUDA types here: a GPU backend's marks carry events (native).
#ifndef LSERVE_KERNELS_QUEUE_MARKS_H_
#define LSERVE_KERNELS_QUEUE_MARKS_H_

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace lserve {

class QueueMarks {
 public:
  explicit QueueMarks(int count) : placed_(count, false) {}
  virtual ~QueueMarks() = default;
  QueueMarks(const QueueMarks&) = delete;
  QueueMarks& operator=(const QueueMarks&) = delete;

  int size() const { return static_cast<int>(placed_.size()); }

  // Engine thread: places mark i behind the work queued so far.
  absl::Status Place(int i) {
    if (i < 0 || i >= size()) return absl::OutOfRangeError(absl::StrCat("no queue mark ", i));
    if (absl::Status status = PlaceOnQueue(i); !status.ok()) {
      Abandon(status);
      return status;
    }
    std::lock_guard<std::mutex> lock(mu_);
    placed_[i] = true;
    changed_.notify_all();
    return absl::OkStatus();
  }
  // Engine thread: the marks not placed yet never will be (the step failed).
  void Abandon(const absl::Status& why) {
    std::lock_guard<std::mutex> lock(mu_);
    if (abandoned_.ok()) abandoned_ = why.ok() ? absl::AbortedError("the step stopped") : why;
    changed_.notify_all();
  }
  // Any thread: waits until mark i is placed and returns its native handle (a
  // cudaEvent_t on the cuda backend; null on a backend whose work is done once queued).
  absl::StatusOr<void*> WaitPlaced(int i, std::chrono::steady_clock::time_point deadline) {
    if (i < 0 || i >= size()) return absl::OutOfRangeError(absl::StrCat("no queue mark ", i));
    std::unique_lock<std::mutex> lock(mu_);
    if (!changed_.wait_until(lock, deadline, [&] { return placed_[i] || !abandoned_.ok(); })) {
      return absl::DeadlineExceededError(absl::StrCat("layer ", i, " was not computed in time"));
    }
    if (!placed_[i]) {
      return absl::AbortedError(
          absl::StrCat("the step computing the KV stopped: ", abandoned_.message()));
    }
    return native(i);
  }
  int num_placed() const {
    std::lock_guard<std::mutex> lock(mu_);
    int placed = 0;
    for (bool p : placed_) placed += p ? 1 : 0;
    return placed;
  }

 protected:
  // The backend's part of Place; a backend that works synchronously has nothing to do.
  virtual absl::Status PlaceOnQueue(int /*i*/) { return absl::OkStatus(); }
  virtual void* native(int /*i*/) const { return nullptr; }

 private:
  mutable std::mutex mu_;
  std::condition_variable changed_;
  std::vector<bool> placed_;
  absl::Status abandoned_;
};

}  // namespace lserve

#endif  // LSERVE_KERNELS_QUEUE_MARKS_H_
