#include "common/metrics/registry.h"

#include <charconv>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/metrics/text_format.h"

namespace lserve::metrics {
namespace {

// Debian's Abseil has its own string_view type, which StrCat takes but std's does not.
absl::string_view Sv(std::string_view s) { return absl::string_view(s.data(), s.size()); }

std::string_view TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

// One sample line: name{labels[,le="..."]} value
void AppendSample(std::string_view name, std::string_view suffix,
                  const std::vector<std::string>& label_names,
                  const std::vector<std::string>& label_values, const std::string* le,
                  std::string_view value, std::string* out) {
  out->append(name);
  out->append(suffix);
  if (!label_names.empty() || le != nullptr) {
    out->push_back('{');
    for (size_t i = 0; i < label_names.size(); ++i) {
      if (i > 0) out->push_back(',');
      out->append(label_names[i]);
      out->append("=\"");
      AppendEscapedLabelValue(label_values[i], out);
      out->push_back('"');
    }
    if (le != nullptr) {
      if (!label_names.empty()) out->push_back(',');
      out->append("le=\"");
      out->append(*le);
      out->push_back('"');
    }
    out->push_back('}');
  }
  out->push_back(' ');
  out->append(value);
  out->push_back('\n');
}

// Counts are printed as integers so they stay exact past 2^53.
std::string FormatCount(uint64_t count) {
  char buf[24];
  return std::string(buf, std::to_chars(buf, buf + sizeof(buf), count).ptr);
}

void AppendSeries(const FamilyBase& family, const std::vector<std::string>& values,
                  const Counter& counter, std::string* out) {
  AppendSample(family.name(), "", family.label_names(), values, nullptr,
               FormatValue(counter.Value()), out);
}

void AppendSeries(const FamilyBase& family, const std::vector<std::string>& values,
                  const Gauge& gauge, std::string* out) {
  AppendSample(family.name(), "", family.label_names(), values, nullptr, FormatValue(gauge.Value()),
               out);
}

void AppendSeries(const FamilyBase& family, const std::vector<std::string>& values,
                  const Histogram& histogram, std::string* out) {
  const Histogram::Snapshot snapshot = histogram.Read();
  const std::vector<double>& bounds = histogram.bounds();
  for (size_t i = 0; i <= bounds.size(); ++i) {
    const std::string le = i < bounds.size() ? FormatValue(bounds[i]) : "+Inf";
    AppendSample(family.name(), "_bucket", family.label_names(), values, &le,
                 FormatCount(snapshot.cumulative_counts[i]), out);
  }
  AppendSample(family.name(), "_sum", family.label_names(), values, nullptr,
               FormatValue(snapshot.sum), out);
  AppendSample(family.name(), "_count", family.label_names(), values, nullptr,
               FormatCount(snapshot.count), out);
}

// Gauges read through callbacks; series are added by Registry::AddGaugeCallback.
class CallbackGaugeFamily final : public FamilyBase {
 public:
  CallbackGaugeFamily(std::string name, std::string help, std::vector<std::string> label_names)
      : FamilyBase(std::move(name), std::move(help), std::move(label_names), MetricType::kGauge) {}

  absl::Status Add(std::vector<std::string> values, std::function<double()> callback) {
    std::vector<std::string_view> views(values.begin(), values.end());
    if (absl::Status status = CheckLabelValues(views); !status.ok()) return status;
    std::lock_guard<std::mutex> lock(mu_);
    if (!callbacks_.try_emplace(std::move(values), std::move(callback)).second) {
      return absl::AlreadyExistsError(
          absl::StrCat("gauge callback ", name(), " already has a series for these labels"));
    }
    return absl::OkStatus();
  }

  void AppendSamples(std::string* out) const override {
    // Callbacks are copied out so none runs under the lock; one may be slow or reentrant.
    std::vector<std::pair<const std::vector<std::string>*, std::function<double()>>> series;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [values, callback] : callbacks_) series.emplace_back(&values, callback);
    }
    for (const auto& [values, callback] : series) {
      AppendSample(name(), "", label_names(), *values, nullptr, FormatValue(callback()), out);
    }
  }

 private:
  mutable std::mutex mu_;
  std::map<std::vector<std::string>, std::function<double()>, internal::LabelValuesLess> callbacks_;
};

absl::Status CheckBounds(const std::vector<double>& bounds) {
  for (size_t i = 0; i < bounds.size(); ++i) {
    if (!std::isfinite(bounds[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("histogram bucket bound ", i, " is ", FormatValue(bounds[i]),
                       "; bounds must be finite (the +Inf bucket is implicit)"));
    }
    if (i > 0 && !(bounds[i] > bounds[i - 1])) {
      return absl::InvalidArgumentError(
          absl::StrCat("histogram bucket bounds must strictly increase; bound ", i, " (",
                       FormatValue(bounds[i]), ") follows ", FormatValue(bounds[i - 1])));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status FamilyBase::CheckLabelValues(absl::Span<const std::string_view> values) const {
  if (values.size() != label_names_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("metric ", name_, " has ", label_names_.size(),
                                                   " label(s) [", absl::StrJoin(label_names_, ", "),
                                                   "] but got ", values.size(), " value(s)"));
  }
  for (size_t i = 0; i < values.size(); ++i) {
    if (!IsValidUtf8(values[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("metric ", name_, " label ", label_names_[i], ": value is not valid UTF-8"));
    }
  }
  return absl::OkStatus();
}

template <typename T>
Family<T>::Family(std::string name, std::string help, std::vector<std::string> label_names,
                  MetricType type, std::function<std::unique_ptr<T>()> make_child)
    : FamilyBase(std::move(name), std::move(help), std::move(label_names), type),
      make_child_(std::move(make_child)) {
  if (this->label_names().empty()) children_.emplace(std::vector<std::string>{}, make_child_());
}

template <typename T>
absl::StatusOr<T*> Family<T>::Labels(absl::Span<const std::string_view> values) {
  std::lock_guard<std::mutex> lock(mu_);
  if (auto it = children_.find(values); it != children_.end()) return it->second.get();
  if (absl::Status status = CheckLabelValues(values); !status.ok()) return status;
  std::vector<std::string> key(values.begin(), values.end());
  return children_.emplace(std::move(key), make_child_()).first->second.get();
}

template <typename T>
T& Family<T>::LabelsOrDie(absl::Span<const std::string_view> values) {
  absl::StatusOr<T*> child = Labels(values);
  CHECK(child.ok()) << child.status();
  return **child;
}

template <typename T>
void Family<T>::AppendSamples(std::string* out) const {
  std::vector<std::pair<const std::vector<std::string>*, const T*>> series;
  {
    std::lock_guard<std::mutex> lock(mu_);
    series.reserve(children_.size());
    for (const auto& [values, child] : children_) series.emplace_back(&values, child.get());
  }
  for (const auto& [values, child] : series) AppendSeries(*this, *values, *child, out);
}

template class Family<Counter>;
template class Family<Gauge>;
template class Family<Histogram>;

Registry::~Registry() = default;

absl::Status Registry::Reserve(std::string_view name, std::string_view help,
                               const std::vector<std::string>& label_names, MetricType type) {
  if (!IsValidMetricName(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("metric name \"", Sv(name), "\" does not match [a-zA-Z_:][a-zA-Z0-9_:]*"));
  }
  if (!IsValidUtf8(help)) {
    return absl::InvalidArgumentError(absl::StrCat("help of ", Sv(name), " is not valid UTF-8"));
  }
  std::set<std::string_view> seen;
  for (const std::string& label : label_names) {
    if (!IsValidLabelName(label)) {
      return absl::InvalidArgumentError(
          absl::StrCat("metric ", Sv(name), ": label name \"", label,
                       "\" does not match [a-zA-Z_][a-zA-Z0-9_]* or starts with __"));
    }
    if (type == MetricType::kHistogram && label == "le") {
      return absl::InvalidArgumentError(
          absl::StrCat("histogram ", Sv(name), ": label name \"le\" is reserved for buckets"));
    }
    if (!seen.insert(label).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("metric ", Sv(name), ": label name \"", label, "\" appears twice"));
    }
  }
  std::vector<std::string> samples = {std::string(name)};
  if (type == MetricType::kHistogram) {
    for (std::string_view suffix : {"_bucket", "_sum", "_count"}) {
      samples.push_back(absl::StrCat(Sv(name), Sv(suffix)));
    }
  }
  for (const std::string& sample : samples) {
    if (sample_names_.contains(sample)) {
      return absl::AlreadyExistsError(absl::StrCat("metric name ", sample, " is already taken"));
    }
  }
  sample_names_.insert(samples.begin(), samples.end());
  return absl::OkStatus();
}

absl::StatusOr<Family<Counter>*> Registry::AddCounter(std::string_view name, std::string_view help,
                                                      std::vector<std::string> label_names) {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = Reserve(name, help, label_names, MetricType::kCounter); !s.ok()) return s;
  auto* family =
      new Family<Counter>(std::string(name), std::string(help), std::move(label_names),
                          MetricType::kCounter, [] { return std::make_unique<Counter>(); });
  families_.emplace_back(family);
  return family;
}

absl::StatusOr<Family<Gauge>*> Registry::AddGauge(std::string_view name, std::string_view help,
                                                  std::vector<std::string> label_names) {
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = Reserve(name, help, label_names, MetricType::kGauge); !s.ok()) return s;
  auto* family = new Family<Gauge>(std::string(name), std::string(help), std::move(label_names),
                                   MetricType::kGauge, [] { return std::make_unique<Gauge>(); });
  families_.emplace_back(family);
  return family;
}

absl::StatusOr<Family<Histogram>*> Registry::AddHistogram(std::string_view name,
                                                          std::string_view help,
                                                          std::vector<std::string> label_names,
                                                          std::vector<double> bucket_bounds) {
  if (absl::Status s = CheckBounds(bucket_bounds); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("histogram ", Sv(name), ": ", s.message()));
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (absl::Status s = Reserve(name, help, label_names, MetricType::kHistogram); !s.ok()) {
    return s;
  }
  auto bounds = std::make_shared<const std::vector<double>>(std::move(bucket_bounds));
  auto* family = new Family<Histogram>(std::string(name), std::string(help), std::move(label_names),
                                       MetricType::kHistogram,
                                       [bounds] { return std::make_unique<Histogram>(bounds); });
  families_.emplace_back(family);
  return family;
}

absl::Status Registry::AddGaugeCallback(std::string_view name, std::string_view help,
                                        std::vector<std::pair<std::string, std::string>> labels,
                                        std::function<double()> callback) {
  if (!callback) {
    return absl::InvalidArgumentError(absl::StrCat("gauge callback ", Sv(name), " is empty"));
  }
  std::vector<std::string> label_names;
  std::vector<std::string> label_values;
  for (auto& [label, value] : labels) {
    label_names.push_back(std::move(label));
    label_values.push_back(std::move(value));
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const std::unique_ptr<FamilyBase>& family : families_) {
    if (family->name() != name) continue;
    auto* callbacks = dynamic_cast<CallbackGaugeFamily*>(family.get());
    if (callbacks == nullptr || callbacks->help() != help ||
        callbacks->label_names() != label_names) {
      return absl::AlreadyExistsError(
          absl::StrCat("metric name ", Sv(name), " is already taken by a metric of another shape"));
    }
    return callbacks->Add(std::move(label_values), std::move(callback));
  }
  if (absl::Status s = Reserve(name, help, label_names, MetricType::kGauge); !s.ok()) return s;
  auto family = std::make_unique<CallbackGaugeFamily>(std::string(name), std::string(help),
                                                      std::move(label_names));
  if (absl::Status s = family->Add(std::move(label_values), std::move(callback)); !s.ok()) {
    sample_names_.erase(sample_names_.find(name));
    return s;
  }
  families_.push_back(std::move(family));
  return absl::OkStatus();
}

std::string Registry::Exposition() const {
  std::vector<const FamilyBase*> families;
  {
    std::lock_guard<std::mutex> lock(mu_);
    families.reserve(families_.size());
    for (const auto& family : families_) families.push_back(family.get());
  }
  std::string out;
  for (const FamilyBase* family : families) {
    out.append("# HELP ").append(family->name());
    if (!family->help().empty()) {
      out.push_back(' ');
      AppendEscapedHelp(family->help(), &out);
    }
    out.append("\n# TYPE ").append(family->name()).push_back(' ');
    out.append(TypeName(family->type())).push_back('\n');
    family->AppendSamples(&out);
  }
  return out;
}

}  // namespace lserve::metrics
