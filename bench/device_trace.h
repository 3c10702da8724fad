// A trace of what the device did over a window of engine steps: every kernel, copy and
// memset with its device timestamps, summarized as the fraction of the window the device
// was busy and the idle stretches between steps. Built on CUPTI's activity API where the
// build has CUDA; elsewhere Start() says there is no tracer.
#ifndef LSERVE_BENCH_DEVICE_TRACE_H_
#define LSERVE_BENCH_DEVICE_TRACE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace lserve::bench {

struct DeviceTraceSummary {
  int64_t steps = 0;
  int64_t kernels = 0;
  int64_t copies = 0;    // memcpy and memset operations
  double window_ms = 0;  // from the first MarkStep to Finish, on the device clock
  double busy_ms = 0;    // the union of all activity intervals inside the window
  double busy_fraction = 0;
  double max_gap_us = 0;        // the longest idle stretch inside the window
  double mean_step_gap_us = 0;  // idle from a step's last activity to the next one's first
  double max_step_gap_us = 0;
  // Idle time inside the window by what ended it: "previous -> next" activity names, the
  // largest totals first (at most kIdleCauses), in microseconds per step.
  static constexpr int kIdleCauses = 8;
  std::vector<std::pair<std::string, double>> idle_by_neighbours;
  // Busy time by activity name, the largest first (at most kBusyKinds), in microseconds per
  // step. Where activities overlap, the time goes to the one that started first: a kernel
  // launched early (programmatic dependent launch) and waiting for its predecessor counts
  // from when the predecessor ends.
  static constexpr int kBusyKinds = 12;
  std::vector<std::pair<std::string, double>> busy_by_activity;
};

// One activity on the device, in device-clock nanoseconds.
struct DeviceInterval {
  uint64_t start = 0;
  uint64_t end = 0;
  bool kernel = true;  // else a copy or memset
  std::string name;    // the kernel's name without namespaces and template arguments
};

// The summary of `activity` (any order) over the window [step_starts.front(), window_end):
// the union of intervals clipped to the window is the busy time; a step's activity is
// what starts at or after its mark and before the next one.
DeviceTraceSummary SummarizeDeviceActivity(std::vector<DeviceInterval> activity,
                                           const std::vector<uint64_t>& step_starts,
                                           uint64_t window_end);

class DeviceTrace {
 public:
  // Starts recording device activity; one trace at a time per process.
  static absl::StatusOr<std::unique_ptr<DeviceTrace>> Start();
  virtual ~DeviceTrace() = default;
  // A step begins now: activity that starts after this belongs to it.
  virtual void MarkStep() = 0;
  // Waits for the device, stops recording and summarizes the window.
  virtual absl::StatusOr<DeviceTraceSummary> Finish() = 0;
};

}  // namespace lserve::bench

#endif  // LSERVE_BENCH_DEVICE_TRACE_H_
