// Prometheus' own linter reads our exposition of every metric kind and finds nothing to
// report: the format parses and the names follow the conventions in registry.h.
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/metrics/registry.h"
#include "gtest/gtest.h"

namespace lserve::metrics {
namespace {

constexpr const char* kPromtool = "/usr/bin/promtool";

// Runs `promtool check metrics` on `text` and returns its exit status and output.
std::pair<int, std::string> PromtoolCheck(const std::string& text) {
  char path[] = "/tmp/lserve_metrics_XXXXXX";
  const int fd = mkstemp(path);
  if (fd < 0) return {-1, "mkstemp failed"};
  close(fd);
  std::ofstream(path, std::ios::binary) << text;
  // promtool lints what it reads on stdin; `timeout` keeps a hung run from hanging the test.
  const std::string command =
      absl::StrCat("timeout 60 ", kPromtool, " check metrics < ", path, " 2>&1");
  std::string output;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return {-1, "popen failed"};
  char buf[512];
  while (fgets(buf, sizeof(buf), pipe) != nullptr) output += buf;
  const int status = pclose(pipe);
  unlink(path);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

TEST(PromtoolCheckTest, ExpositionOfEveryKindLintsClean) {
  if (access(kPromtool, X_OK) != 0) GTEST_SKIP() << kPromtool << " is not installed";
  Registry registry;
  Family<Counter>* requests = *registry.AddCounter(
      "lserve_requests_total", "Requests finished, by outcome.", {"model", "outcome"});
  Family<Gauge>* running =
      *registry.AddGauge("lserve_num_requests_running", "Requests in the running batch.");
  Family<Histogram>* ttft = *registry.AddHistogram("lserve_time_to_first_token_seconds",
                                                   "Time from arrival to the first token.",
                                                   {"model"}, *ExponentialBuckets(0.001, 4, 8));
  Family<Histogram>* itl =
      *registry.AddHistogram("lserve_inter_token_latency_seconds", "Time between tokens.", {},
                             *LinearBuckets(0.01, 0.01, 5));
  ASSERT_TRUE(registry
                  .AddGaugeCallback("lserve_kv_cache_usage_ratio", "Share of KV pages in use.",
                                    {{"pool", "dense"}}, [] { return 0.375; })
                  .ok());

  requests->LabelsOrDie({"stories260K", "ok"}).Increment(12);
  requests->LabelsOrDie({"stories260K", "error"}).Increment();
  requests->LabelsOrDie({"odd \"model\"\\name\n", "ok"}).Increment();
  running->LabelsOrDie({}).Set(3);
  for (double v : {0.0004, 0.002, 0.05, 0.9, 30.0}) ttft->LabelsOrDie({"stories260K"}).Observe(v);
  for (double v : {0.005, 0.015, 0.1}) itl->LabelsOrDie({}).Observe(v);

  const std::string text = registry.Exposition();
  const auto [status, output] = PromtoolCheck(text);
  EXPECT_EQ(status, 0) << output << "\n--- exposition ---\n" << text;
  EXPECT_EQ(output, "") << "\n--- exposition ---\n" << text;
}

// The linter is not a rubber stamp: it does flag a counter without the _total suffix,
// which is why the naming rules are written down in registry.h.
TEST(PromtoolCheckTest, LinterFlagsBadlyNamedCounters) {
  if (access(kPromtool, X_OK) != 0) GTEST_SKIP() << kPromtool << " is not installed";
  Registry registry;
  (*registry.AddCounter("lserve_requests", "Requests."))->LabelsOrDie({}).Increment();
  const auto [status, output] = PromtoolCheck(registry.Exposition());
  EXPECT_NE(output.find("_total"), std::string::npos) << output;
}

}  // namespace
}  // namespace lserve::metrics
