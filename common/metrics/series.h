// The three kinds of time series a Registry hands out. Each is updated with relaxed
// atomics only, so the serving hot path never waits on a lock or on a scrape.
#ifndef LSERVE_COMMON_METRICS_SERIES_H_
#define LSERVE_COMMON_METRICS_SERIES_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"

namespace lserve::metrics {

// A monotonically increasing value (requests served, tokens generated).
class Counter {
 public:
  // Returns false and changes nothing when delta is negative or NaN: a counter that went
  // down would read as a process restart to Prometheus' rate().
  bool Increment(double delta = 1.0);
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// A value that goes up and down (requests running, bytes in use).
class Gauge {
 public:
  void Set(double value) { value_.store(value, std::memory_order_relaxed); }
  void Increment(double delta = 1.0) { value_.fetch_add(delta, std::memory_order_relaxed); }
  void Decrement(double delta = 1.0) { value_.fetch_sub(delta, std::memory_order_relaxed); }
  double Value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Observations counted into buckets with fixed upper bounds (le = "less or equal") plus
// the implicit +Inf bucket. Buckets are stored non-cumulatively so Observe touches one
// counter; Read() accumulates them.
class Histogram {
 public:
  // `bounds` must be finite and strictly increasing (Registry::AddHistogram checks).
  explicit Histogram(std::shared_ptr<const std::vector<double>> bounds);

  // NaN lands in the +Inf bucket and turns the sum into NaN, as Prometheus' own clients do.
  void Observe(double value);

  struct Snapshot {
    std::vector<uint64_t> cumulative_counts;  // one per bound, then +Inf
    double sum = 0.0;
    // Equal to the +Inf bucket by construction, even when read during observations.
    uint64_t count = 0;
  };
  // Not atomic across buckets: a scrape racing Observe may see the sum without the bucket
  // or vice versa; each bucket count is still exact and never decreases.
  Snapshot Read() const;

  const std::vector<double>& bounds() const { return *bounds_; }

 private:
  std::shared_ptr<const std::vector<double>> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;  // bounds_->size() + 1 buckets
  std::atomic<double> sum_{0.0};
};

// `count` bounds start, start * factor, start * factor^2, ...; start > 0, factor > 1.
absl::StatusOr<std::vector<double>> ExponentialBuckets(double start, double factor, int count);
// `count` bounds start, start + width, start + 2 * width, ...; width > 0.
absl::StatusOr<std::vector<double>> LinearBuckets(double start, double width, int count);

}  // namespace lserve::metrics

#endif  // LSERVE_COMMON_METRICS_SERIES_H_
