// Many threads updating, creating series and scraping at once: totals come out exact, a
// label set maps to one series, and scrapes stay well-formed mid-update.
#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/metrics/registry.h"
#include "gtest/gtest.h"

namespace lserve::metrics {
namespace {

constexpr int kThreads = 8;
constexpr int kPerThread = 20000;

void RunThreads(const std::function<void(int)>& body) {
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(body, t);
  for (std::thread& thread : threads) thread.join();
}

TEST(MetricsConcurrencyTest, ConcurrentUpdatesGiveExactTotals) {
  Registry registry;
  Counter& counter = (*registry.AddCounter("c_total", "c"))->LabelsOrDie({});
  Gauge& gauge = (*registry.AddGauge("g", "g"))->LabelsOrDie({});
  Histogram& histogram = (*registry.AddHistogram("h_seconds", "h", {}, {1, 2}))->LabelsOrDie({});
  RunThreads([&](int t) {
    for (int i = 0; i < kPerThread; ++i) {
      counter.Increment();
      gauge.Increment(2);
      gauge.Decrement();
      // Halves, ones and fours sum exactly in a double at these counts.
      histogram.Observe(i % 3 == 0 ? 0.5 : i % 3 == 1 ? 1.0 : 4.0);
    }
  });
  const double total = static_cast<double>(kThreads) * kPerThread;
  EXPECT_EQ(counter.Value(), total);
  EXPECT_EQ(gauge.Value(), total);
  const Histogram::Snapshot s = histogram.Read();
  uint64_t thirds[3] = {0, 0, 0};
  for (int i = 0; i < kPerThread; ++i) ++thirds[i % 3];
  const uint64_t n = kThreads;
  EXPECT_EQ(s.cumulative_counts,
            (std::vector<uint64_t>{n * (thirds[0] + thirds[1]), n * (thirds[0] + thirds[1]),
                                   n * kPerThread}));
  EXPECT_EQ(s.count, n * kPerThread);
  EXPECT_EQ(s.sum, n * (0.5 * thirds[0] + 1.0 * thirds[1] + 4.0 * thirds[2]));
}

TEST(MetricsConcurrencyTest, RacingLabelLookupsShareOneSeries) {
  Registry registry;
  Family<Counter>* family = *registry.AddCounter("c_total", "c", {"shard"});
  std::vector<std::vector<Counter*>> seen(kThreads);
  RunThreads([&](int t) {
    for (int i = 0; i < 2000; ++i) {
      Counter* counter = *family->Labels({absl::StrCat(i % 16)});
      counter->Increment();
      if (i < 16) seen[t].push_back(counter);
    }
  });
  for (int t = 1; t < kThreads; ++t) EXPECT_EQ(seen[t], seen[0]);
  double sum = 0;
  for (int shard = 0; shard < 16; ++shard)
    sum += family->LabelsOrDie({absl::StrCat(shard)}).Value();
  EXPECT_EQ(sum, kThreads * 2000.0);
}

TEST(MetricsConcurrencyTest, ScrapesDuringUpdatesAndRegistrationsStayConsistent) {
  Registry registry;
  Family<Histogram>* family = *registry.AddHistogram("h_seconds", "h", {"k"}, {1});
  std::atomic<bool> stop{false};
  std::thread scraper([&] {
    while (!stop.load()) {
      const std::string text = registry.Exposition();
      // The +Inf bucket and _count are read from the same snapshot, so they always agree.
      size_t pos = 0;
      while ((pos = text.find("le=\"+Inf\"} ", pos)) != std::string::npos) {
        pos += 11;
        const std::string inf = text.substr(pos, text.find('\n', pos) - pos);
        const size_t count_at = text.find("_count{", pos);
        ASSERT_NE(count_at, std::string::npos);
        const size_t value_at = text.find("} ", count_at) + 2;
        EXPECT_EQ(text.substr(value_at, text.find('\n', value_at) - value_at), inf);
      }
    }
  });
  RunThreads([&](int t) {
    ASSERT_TRUE(registry.AddGauge(absl::StrCat("g", t), "g").ok());
    for (int i = 0; i < kPerThread / 4; ++i) {
      family->LabelsOrDie({absl::StrCat(i % 4)}).Observe(i % 2 == 0 ? 0.5 : 2.0);
    }
  });
  stop.store(true);
  scraper.join();
  EXPECT_EQ(family->LabelsOrDie({"0"}).Read().count, static_cast<uint64_t>(kThreads) * 1250);
}

}  // namespace
}  // namespace lserve::metrics
