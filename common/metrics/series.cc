#include "common/metrics/series.h"

#include <algorithm>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace lserve::metrics {

bool Counter::Increment(double delta) {
  if (!(delta >= 0.0)) return false;  // also false for NaN
  value_.fetch_add(delta, std::memory_order_relaxed);
  return true;
}

Histogram::Histogram(std::shared_ptr<const std::vector<double>> bounds)
    : bounds_(std::move(bounds)),
      counts_(std::make_unique<std::atomic<uint64_t>[]>(bounds_->size() + 1)) {}

void Histogram::Observe(double value) {
  const std::vector<double>& bounds = *bounds_;
  size_t bucket = bounds.size();
  if (!std::isnan(value)) {
    bucket = std::lower_bound(bounds.begin(), bounds.end(), value) - bounds.begin();
  }
  counts_[bucket].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::Read() const {
  Snapshot snapshot;
  snapshot.cumulative_counts.resize(bounds_->size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_->size(); ++i) {
    running += counts_[i].load(std::memory_order_relaxed);
    snapshot.cumulative_counts[i] = running;
  }
  snapshot.count = running;
  snapshot.sum = sum_.load(std::memory_order_relaxed);
  return snapshot;
}

absl::StatusOr<std::vector<double>> ExponentialBuckets(double start, double factor, int count) {
  if (!(start > 0.0) || !std::isfinite(start) || !(factor > 1.0) || !std::isfinite(factor) ||
      count < 1) {
    return absl::InvalidArgumentError(absl::StrCat("exponential buckets need start > 0, factor > 1",
                                                   " and count >= 1; got start ", start,
                                                   ", factor ", factor, ", count ", count));
  }
  std::vector<double> bounds(count);
  double bound = start;
  for (int i = 0; i < count; ++i) {
    if (!std::isfinite(bound)) {
      return absl::InvalidArgumentError(absl::StrCat("exponential bucket ", i, " overflows (start ",
                                                     start, ", factor ", factor, ", count ", count,
                                                     ")"));
    }
    bounds[i] = bound;
    bound *= factor;
  }
  return bounds;
}

absl::StatusOr<std::vector<double>> LinearBuckets(double start, double width, int count) {
  if (!std::isfinite(start) || !(width > 0.0) || !std::isfinite(width) || count < 1) {
    return absl::InvalidArgumentError(absl::StrCat("linear buckets need a finite start, width > 0",
                                                   " and count >= 1; got start ", start, ", width ",
                                                   width, ", count ", count));
  }
  std::vector<double> bounds(count);
  for (int i = 0; i < count; ++i) {
    // Multiplying rather than accumulating keeps rounding error from growing with i.
    bounds[i] = start + width * i;
    if (!std::isfinite(bounds[i]) || (i > 0 && !(bounds[i] > bounds[i - 1]))) {
      return absl::InvalidArgumentError(absl::StrCat("linear bucket ", i,
                                                     " is not finite and increasing (start ", start,
                                                     ", width ", width, ", count ", count, ")"));
    }
  }
  return bounds;
}

}  // namespace lserve::metrics
