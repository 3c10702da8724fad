// A small Prometheus metrics registry: families of counters, gauges and histograms,
// rendered in the text exposition format 0.0.4 (served by HttpExporter).
//
// Naming, so `promtool check metrics` has nothing to say and dashboards read alike:
//  * prefix every name with the process' namespace: `lserve_`;
//  * use base units and put them in the name: `_seconds`, `_bytes`; a 0..1 share ends in
//    `_ratio` (`lserve_kv_cache_usage_ratio`), never "percent";
//  * counters end in `_total` (`lserve_requests_total`) and nothing else does; other
//    names end in their unit when they have one (`lserve_time_to_first_token_seconds`),
//    spelled out (promtool flags `_ms`); no name ends in `_count`, `_sum` or `_bucket`,
//    which histograms append;
//  * help text is one plain sentence, never empty (promtool flags that); label names are
//    lower_snake_case;
//  * label values must come from a small, bounded set (model, outcome), never request ids:
//    every distinct value is a new series held for the process' life.
//
// Threading: registration and first use of a label set lock the registry / family; the
// returned Counter / Gauge / Histogram pointers stay valid for the Registry's life and
// update without any lock, so hot paths look a series up once and keep the pointer.
#ifndef LSERVE_COMMON_METRICS_REGISTRY_H_
#define LSERVE_COMMON_METRICS_REGISTRY_H_

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/metrics/series.h"

namespace lserve::metrics {

enum class MetricType { kCounter, kGauge, kHistogram };

namespace internal {
// Orders label-value tuples so a lookup by string_views needs no allocation and the
// exposition lists series in a stable order.
struct LabelValuesLess {
  using is_transparent = void;
  template <typename A, typename B>
  bool operator()(const A& a, const B& b) const {
    return std::lexicographical_compare(
        a.begin(), a.end(), b.begin(), b.end(),
        [](std::string_view x, std::string_view y) { return x < y; });
  }
};
}  // namespace internal

// What every family shares; the Registry renders families through this interface.
class FamilyBase {
 public:
  virtual ~FamilyBase() = default;
  FamilyBase(const FamilyBase&) = delete;
  FamilyBase& operator=(const FamilyBase&) = delete;

  const std::string& name() const { return name_; }
  const std::string& help() const { return help_; }
  const std::vector<std::string>& label_names() const { return label_names_; }
  MetricType type() const { return type_; }

  // Appends the family's sample lines (not its HELP / TYPE lines), series in label order.
  virtual void AppendSamples(std::string* out) const = 0;

 protected:
  FamilyBase(std::string name, std::string help, std::vector<std::string> label_names,
             MetricType type)
      : name_(std::move(name)),
        help_(std::move(help)),
        label_names_(std::move(label_names)),
        type_(type) {}

  // InvalidArgument unless there is one valid UTF-8 value per label name.
  absl::Status CheckLabelValues(absl::Span<const std::string_view> values) const;

 private:
  const std::string name_;
  const std::string help_;
  const std::vector<std::string> label_names_;
  const MetricType type_;
};

// The series of one metric, one child per distinct tuple of label values. A family with
// no label names has exactly one child, created at registration so it is scraped as 0.
template <typename T>
class Family final : public FamilyBase {
 public:
  // The child for `values` (one per label name, in order), created on first use. Checked:
  // safe for values taken from requests; wrong arity or invalid UTF-8 is InvalidArgument.
  absl::StatusOr<T*> Labels(absl::Span<const std::string_view> values);

  // The same for values fixed in the code (`{"prefill"}`, `{}`): CHECK-fails on a
  // mismatch, which is a programming error caught by the first test that runs it.
  T& LabelsOrDie(absl::Span<const std::string_view> values);

  void AppendSamples(std::string* out) const override;

 private:
  friend class Registry;
  Family(std::string name, std::string help, std::vector<std::string> label_names, MetricType type,
         std::function<std::unique_ptr<T>()> make_child);

  const std::function<std::unique_ptr<T>()> make_child_;
  mutable std::mutex mu_;
  // std::map nodes never move, so child pointers and keys stay valid without the lock.
  std::map<std::vector<std::string>, std::unique_ptr<T>, internal::LabelValuesLess> children_;
};

extern template class Family<Counter>;
extern template class Family<Gauge>;
extern template class Family<Histogram>;

class Registry {
 public:
  Registry() = default;
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Registration fails with InvalidArgument for a bad metric or label name, a duplicated
  // label name, or invalid UTF-8 in the help, and with AlreadyExists when the name (or a
  // name a histogram derives: _bucket, _sum, _count) is taken.
  absl::StatusOr<Family<Counter>*> AddCounter(std::string_view name, std::string_view help,
                                              std::vector<std::string> label_names = {});
  absl::StatusOr<Family<Gauge>*> AddGauge(std::string_view name, std::string_view help,
                                          std::vector<std::string> label_names = {});
  // `bucket_bounds` are the finite, strictly increasing upper bounds (may be empty); the
  // +Inf bucket is implicit. "le" is reserved as a label name.
  absl::StatusOr<Family<Histogram>*> AddHistogram(std::string_view name, std::string_view help,
                                                  std::vector<std::string> label_names,
                                                  std::vector<double> bucket_bounds);

  // A gauge series whose value is read from `callback` at each scrape, for state owned
  // elsewhere (KV cache usage). Several calls may add series with different label values
  // to one name when help and label names agree. The callback runs on the scraping thread
  // with no registry lock held; it must stay callable for the Registry's life.
  absl::Status AddGaugeCallback(std::string_view name, std::string_view help,
                                std::vector<std::pair<std::string, std::string>> labels,
                                std::function<double()> callback);

  // Every family in registration order, in the text exposition format 0.0.4.
  std::string Exposition() const;

 private:
  // Validates the common parts and reserves the sample names; called with mu_ held.
  absl::Status Reserve(std::string_view name, std::string_view help,
                       const std::vector<std::string>& label_names, MetricType type);

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<FamilyBase>> families_;
  std::set<std::string, std::less<>> sample_names_;
};

}  // namespace lserve::metrics

#endif  // LSERVE_COMMON_METRICS_REGISTRY_H_
