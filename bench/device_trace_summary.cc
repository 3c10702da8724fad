#include <algorithm>
#include <map>

#include "bench/device_trace.h"

namespace lserve::bench {

DeviceTraceSummary SummarizeDeviceActivity(std::vector<DeviceInterval> activity,
                                           const std::vector<uint64_t>& step_starts,
                                           uint64_t window_end) {
  DeviceTraceSummary summary;
  if (step_starts.empty() || window_end <= step_starts.front()) return summary;
  const uint64_t window_start = step_starts.front();
  summary.steps = static_cast<int64_t>(step_starts.size());
  summary.window_ms = (window_end - window_start) * 1e-6;
  std::sort(activity.begin(), activity.end(),
            [](const DeviceInterval& a, const DeviceInterval& b) { return a.start < b.start; });
  // Busy time and idle stretches: sweep the clipped intervals in start order.
  uint64_t busy = 0, gap_max = 0, covered_to = window_start;
  std::map<std::string, uint64_t> idle;  // by "last to end before it -> first after it"
  std::map<std::string, uint64_t> busy_by_name;
  std::string last_name = "(window start)";
  for (const DeviceInterval& a : activity) {
    const uint64_t start = std::max(a.start, window_start);
    const uint64_t end = std::min(a.end, window_end);
    if (end <= start) continue;
    (a.kernel ? summary.kernels : summary.copies) += 1;
    if (start > covered_to) {
      gap_max = std::max(gap_max, start - covered_to);
      idle[last_name + " -> " + a.name] += start - covered_to;
    }
    if (end > covered_to) {
      busy += end - std::max(start, covered_to);
      busy_by_name[a.name] += end - std::max(start, covered_to);
      covered_to = end;
      last_name = a.name;
    }
  }
  if (window_end > covered_to) {
    gap_max = std::max(gap_max, window_end - covered_to);
    idle[last_name + " -> (window end)"] += window_end - covered_to;
  }
  // Microseconds per step by name, the largest `keep` first.
  auto per_step = [&](const std::map<std::string, uint64_t>& ns_by_name, size_t keep) {
    std::vector<std::pair<std::string, double>> out;
    for (const auto& [name, ns] : ns_by_name) out.emplace_back(name, ns * 1e-3 / summary.steps);
    std::sort(out.begin(), out.end(),
              [](const auto& a, const auto& b) { return a.second > b.second; });
    if (out.size() > keep) out.resize(keep);
    return out;
  };
  summary.idle_by_neighbours = per_step(idle, DeviceTraceSummary::kIdleCauses);
  summary.busy_by_activity = per_step(busy_by_name, DeviceTraceSummary::kBusyKinds);
  summary.busy_ms = busy * 1e-6;
  summary.busy_fraction = static_cast<double>(busy) / (window_end - window_start);
  summary.max_gap_us = gap_max * 1e-3;
  // Per step: the first start and the last end of the activity it began.
  const size_t steps = step_starts.size();
  std::vector<uint64_t> first(steps, UINT64_MAX), last(steps, 0);
  for (const DeviceInterval& a : activity) {
    if (a.start < window_start || a.start >= window_end) continue;
    const size_t step =
        std::upper_bound(step_starts.begin(), step_starts.end(), a.start) - step_starts.begin() - 1;
    first[step] = std::min(first[step], a.start);
    last[step] = std::max(last[step], a.end);
  }
  double gap_sum = 0;
  int gaps = 0;
  for (size_t s = 1; s < steps; ++s) {
    if (last[s - 1] == 0 || first[s] == UINT64_MAX) continue;
    const double gap = first[s] > last[s - 1] ? (first[s] - last[s - 1]) * 1e-3 : 0.0;
    gap_sum += gap;
    summary.max_step_gap_us = std::max(summary.max_step_gap_us, gap);
    ++gaps;
  }
  summary.mean_step_gap_us = gaps > 0 ? gap_sum / gaps : 0.0;
  return summary;
}

}  // namespace lserve::bench
