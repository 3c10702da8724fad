// The registry's exposition text, byte for byte, and its refusal of every malformed
// registration or label set with a status instead of a crash.
#include "common/metrics/registry.h"

#include <cmath>
#include <limits>
#include <string>

#include "gtest/gtest.h"

namespace lserve::metrics {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

TEST(RegistryTest, ExpositionMatchesGoldenText) {
  Registry registry;
  Family<Counter>* requests =
      *registry.AddCounter("lserve_requests_total", "Requests finished, by outcome.", {"outcome"});
  Family<Gauge>* running = *registry.AddGauge("lserve_num_requests_running", "Requests decoding.");
  Family<Histogram>* ttft = *registry.AddHistogram("lserve_time_to_first_token_seconds",
                                                   "Time to first token.", {}, {0.25, 0.5, 1});
  Family<Histogram>* transfer = *registry.AddHistogram("lserve_kv_transfer_seconds",
                                                       "KV hand-off time.", {"direction"}, {0.5});

  requests->LabelsOrDie({"ok"}).Increment(3);
  requests->LabelsOrDie({"error"}).Increment();
  running->LabelsOrDie({}).Set(2);
  for (double v : {0.125, 0.25, 0.5, 2.0}) ttft->LabelsOrDie({}).Observe(v);
  transfer->LabelsOrDie({"send"}).Observe(0.75);

  EXPECT_EQ(registry.Exposition(),
            "# HELP lserve_requests_total Requests finished, by outcome.\n"
            "# TYPE lserve_requests_total counter\n"
            "lserve_requests_total{outcome=\"error\"} 1\n"
            "lserve_requests_total{outcome=\"ok\"} 3\n"
            "# HELP lserve_num_requests_running Requests decoding.\n"
            "# TYPE lserve_num_requests_running gauge\n"
            "lserve_num_requests_running 2\n"
            "# HELP lserve_time_to_first_token_seconds Time to first token.\n"
            "# TYPE lserve_time_to_first_token_seconds histogram\n"
            "lserve_time_to_first_token_seconds_bucket{le=\"0.25\"} 2\n"
            "lserve_time_to_first_token_seconds_bucket{le=\"0.5\"} 3\n"
            "lserve_time_to_first_token_seconds_bucket{le=\"1\"} 3\n"
            "lserve_time_to_first_token_seconds_bucket{le=\"+Inf\"} 4\n"
            "lserve_time_to_first_token_seconds_sum 2.875\n"
            "lserve_time_to_first_token_seconds_count 4\n"
            "# HELP lserve_kv_transfer_seconds KV hand-off time.\n"
            "# TYPE lserve_kv_transfer_seconds histogram\n"
            "lserve_kv_transfer_seconds_bucket{direction=\"send\",le=\"0.5\"} 0\n"
            "lserve_kv_transfer_seconds_bucket{direction=\"send\",le=\"+Inf\"} 1\n"
            "lserve_kv_transfer_seconds_sum{direction=\"send\"} 0.75\n"
            "lserve_kv_transfer_seconds_count{direction=\"send\"} 1\n");
}

TEST(RegistryTest, EscapesHelpAndLabelValues) {
  Registry registry;
  Family<Gauge>* gauge =
      *registry.AddGauge("x_ratio", "Back\\slash, \"quotes\"\nand a newline.", {"a", "b"});
  gauge->LabelsOrDie({"q\"uote", "back\\slash\nnewline"}).Set(0.5);
  EXPECT_EQ(registry.Exposition(),
            "# HELP x_ratio Back\\\\slash, \"quotes\"\\nand a newline.\n"
            "# TYPE x_ratio gauge\n"
            "x_ratio{a=\"q\\\"uote\",b=\"back\\\\slash\\nnewline\"} 0.5\n");
}

TEST(RegistryTest, SpecialValuesAndEmptyHelpAreWellFormed) {
  Registry registry;
  Family<Gauge>* gauge = *registry.AddGauge("g", "", {"k"});
  gauge->LabelsOrDie({"inf"}).Set(kInf);
  gauge->LabelsOrDie({"minus_inf"}).Set(-kInf);
  gauge->LabelsOrDie({"nan"}).Set(std::nan(""));
  gauge->LabelsOrDie({"tiny"}).Set(1e-9);
  EXPECT_EQ(registry.Exposition(),
            "# HELP g\n# TYPE g gauge\n"
            "g{k=\"inf\"} +Inf\ng{k=\"minus_inf\"} -Inf\ng{k=\"nan\"} NaN\ng{k=\"tiny\"} 1e-09\n");
}

TEST(RegistryTest, HistogramBucketsAreCumulativeAndEndInInf) {
  Registry registry;
  Histogram& h =
      (*registry.AddHistogram("h_seconds", "h", {}, *ExponentialBuckets(1, 2, 3)))->LabelsOrDie({});
  for (double v : {-kInf, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 4.5, 100.0, kInf}) h.Observe(v);
  Histogram::Snapshot s = h.Read();
  EXPECT_EQ(s.cumulative_counts, (std::vector<uint64_t>{3, 5, 7, 10}));
  EXPECT_EQ(s.count, 10u);
  EXPECT_TRUE(std::isnan(s.sum));  // +Inf plus -Inf

  Histogram& empty = (*registry.AddHistogram("e_seconds", "e", {}, {}))->LabelsOrDie({});
  empty.Observe(std::nan(""));
  EXPECT_EQ(empty.Read().cumulative_counts, std::vector<uint64_t>{1});
  EXPECT_NE(registry.Exposition().find("e_seconds_bucket{le=\"+Inf\"} 1\n"
                                       "e_seconds_sum NaN\n"
                                       "e_seconds_count 1\n"),
            std::string::npos);
}

TEST(RegistryTest, LabelsReturnsTheSameSeriesForTheSameValues) {
  Registry registry;
  Family<Counter>* family = *registry.AddCounter("c_total", "c", {"a", "b"});
  Counter* first = *family->Labels({"x", "y"});
  EXPECT_EQ(*family->Labels({"x", "y"}), first);
  EXPECT_NE(*family->Labels({"y", "x"}), first);
  EXPECT_EQ(&family->LabelsOrDie({"x", "y"}), first);
}

TEST(RegistryTest, WrongLabelValuesAreInvalidArgument) {
  Registry registry;
  Family<Counter>* family = *registry.AddCounter("c_total", "c", {"a", "b"});
  EXPECT_EQ(family->Labels({"only one"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(family->Labels({"1", "2", "3"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(family->Labels({"ok", "\xC3"}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_DEATH(family->LabelsOrDie({"only one"}), "2 label");
}

TEST(RegistryTest, CounterRefusesToGoDown) {
  Counter counter;
  EXPECT_TRUE(counter.Increment(2.5));
  EXPECT_FALSE(counter.Increment(-1));
  EXPECT_FALSE(counter.Increment(std::nan("")));
  EXPECT_TRUE(counter.Increment(0));
  EXPECT_EQ(counter.Value(), 2.5);
}

TEST(RegistryTest, GaugeMovesBothWays) {
  Gauge gauge;
  gauge.Set(10);
  gauge.Increment();
  gauge.Decrement(4);
  gauge.Increment(0.5);
  EXPECT_EQ(gauge.Value(), 7.5);
}

TEST(RegistryTest, BadRegistrationsAreRefusedWithStatus) {
  Registry registry;
  auto code = [](const auto& result) { return result.status().code(); };
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  constexpr auto kExists = absl::StatusCode::kAlreadyExists;
  EXPECT_EQ(code(registry.AddCounter("bad-name", "h")), kInvalid);
  EXPECT_EQ(code(registry.AddCounter("", "h")), kInvalid);
  EXPECT_EQ(code(registry.AddCounter("c_total", "h", {"__reserved"})), kInvalid);
  EXPECT_EQ(code(registry.AddCounter("c_total", "h", {"a:b"})), kInvalid);
  EXPECT_EQ(code(registry.AddCounter("c_total", "h", {"a", "a"})), kInvalid);
  EXPECT_EQ(code(registry.AddGauge("g", "\xFF")), kInvalid);
  EXPECT_EQ(code(registry.AddHistogram("h", "h", {"le"}, {1})), kInvalid);
  EXPECT_EQ(code(registry.AddHistogram("h", "h", {}, {1, 1})), kInvalid);
  EXPECT_EQ(code(registry.AddHistogram("h", "h", {}, {2, 1})), kInvalid);
  EXPECT_EQ(code(registry.AddHistogram("h", "h", {}, {1, kInf})), kInvalid);
  EXPECT_EQ(code(registry.AddHistogram("h", "h", {}, {std::nan("")})), kInvalid);

  // None of the refusals above took a name.
  ASSERT_TRUE(registry.AddCounter("c_total", "h").ok());
  ASSERT_TRUE(registry.AddHistogram("h", "h", {}, {1}).ok());
  EXPECT_EQ(code(registry.AddCounter("c_total", "h")), kExists);
  EXPECT_EQ(code(registry.AddGauge("c_total", "h")), kExists);
  EXPECT_EQ(code(registry.AddGauge("h_count", "h")), kExists);  // derived from histogram h
  ASSERT_TRUE(registry.AddGauge("x_sum", "h").ok());
  EXPECT_EQ(code(registry.AddHistogram("x", "h", {}, {})), kExists);  // would emit x_sum
}

TEST(RegistryTest, BucketHelpersValidateTheirArguments) {
  EXPECT_EQ(*ExponentialBuckets(0.5, 2, 4), (std::vector<double>{0.5, 1, 2, 4}));
  EXPECT_EQ(*LinearBuckets(0, 0.25, 3), (std::vector<double>{0, 0.25, 0.5}));
  EXPECT_FALSE(ExponentialBuckets(0, 2, 3).ok());
  EXPECT_FALSE(ExponentialBuckets(1, 1, 3).ok());
  EXPECT_FALSE(ExponentialBuckets(1, 2, 0).ok());
  EXPECT_FALSE(ExponentialBuckets(1e300, 1e10, 3).ok());
  EXPECT_FALSE(LinearBuckets(0, 0, 3).ok());
  EXPECT_FALSE(LinearBuckets(kInf, 1, 3).ok());
  EXPECT_FALSE(LinearBuckets(0, 1, -1).ok());
}

TEST(RegistryTest, FamiliesKeepRegistrationOrderAndUnusedOnesShowOnlyMetadata) {
  Registry registry;
  ASSERT_TRUE(registry.AddGauge("zeta", "z", {"k"}).ok());
  ASSERT_TRUE(registry.AddGauge("alpha", "a").ok());
  EXPECT_EQ(registry.Exposition(),
            "# HELP zeta z\n# TYPE zeta gauge\n# HELP alpha a\n# TYPE alpha gauge\nalpha 0\n");
}

TEST(RegistryTest, GaugeCallbacksAreReadAtEachScrape) {
  Registry registry;
  double usage = 0.25;
  ASSERT_TRUE(registry
                  .AddGaugeCallback("kv_usage_ratio", "KV pages in use.", {{"pool", "streaming"}},
                                    [&usage] { return usage; })
                  .ok());
  ASSERT_TRUE(registry
                  .AddGaugeCallback("kv_usage_ratio", "KV pages in use.", {{"pool", "dense"}},
                                    [] { return 1.0; })
                  .ok());
  const std::string header =
      "# HELP kv_usage_ratio KV pages in use.\n# TYPE kv_usage_ratio gauge\n";
  EXPECT_EQ(registry.Exposition(), header +
                                       "kv_usage_ratio{pool=\"dense\"} 1\n"
                                       "kv_usage_ratio{pool=\"streaming\"} 0.25\n");
  usage = 0.5;
  EXPECT_EQ(registry.Exposition(), header +
                                       "kv_usage_ratio{pool=\"dense\"} 1\n"
                                       "kv_usage_ratio{pool=\"streaming\"} 0.5\n");

  constexpr auto kExists = absl::StatusCode::kAlreadyExists;
  auto one = [] { return 1.0; };
  EXPECT_EQ(
      registry.AddGaugeCallback("kv_usage_ratio", "KV pages in use.", {{"pool", "dense"}}, one)
          .code(),
      kExists);
  EXPECT_EQ(registry.AddGaugeCallback("kv_usage_ratio", "Other help.", {{"pool", "x"}}, one).code(),
            kExists);
  EXPECT_EQ(registry.AddGaugeCallback("kv_usage_ratio", "KV pages in use.", {}, one).code(),
            kExists);
  ASSERT_TRUE(registry.AddCounter("c_total", "c").ok());
  EXPECT_EQ(registry.AddGaugeCallback("c_total", "c", {}, one).code(), kExists);
  EXPECT_EQ(registry.AddGaugeCallback("new_ratio", "n", {}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(registry.AddGaugeCallback("bad_ratio", "b", {{"k", "\xC3"}}, one).code(),
            absl::StatusCode::kInvalidArgument);
  // A refused first series leaves the name free.
  EXPECT_TRUE(registry.AddGaugeCallback("bad_ratio", "b", {{"k", "fine"}}, one).ok());
}

}  // namespace
}  // namespace lserve::metrics
