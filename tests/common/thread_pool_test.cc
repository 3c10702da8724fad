// The thread pool under concurrent use: every index runs exactly once, ranges honour the
// grain, and pools are reusable and destructible while idle.
#include "common/thread_pool.h"

#include <atomic>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace lserve {
namespace {

TEST(ThreadPoolTest, EveryIndexRunsExactlyOnce) {
  ThreadPool pool(4);
  for (int64_t n : {0, 1, 7, 1000, 100003}) {
    std::vector<std::atomic<int>> hits(n);
    pool.ParallelFor(n, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n " << n << " i " << i;
  }
}

TEST(ThreadPoolTest, RangesAreAtLeastTheGrain) {
  ThreadPool pool(3);
  std::atomic<int64_t> smallest{1 << 30};
  pool.ParallelFor(1000, 64, [&](int64_t begin, int64_t end) {
    if (end < 1000) {
      int64_t seen = smallest.load();
      while (end - begin < seen && !smallest.compare_exchange_weak(seen, end - begin)) {
      }
    }
  });
  EXPECT_GE(smallest.load(), 64);
}

TEST(ThreadPoolTest, ManyRoundsAccumulateTheSameSum) {
  ThreadPool pool(4);
  std::atomic<int64_t> total{0};
  for (int round = 0; round < 500; ++round) {
    pool.ParallelFor(257, 1, [&](int64_t begin, int64_t end) {
      int64_t local = 0;
      for (int64_t i = begin; i < end; ++i) local += i;
      total += local;
    });
  }
  EXPECT_EQ(total.load(), 500 * (256 * 257 / 2));
}

// Separate pools used from separate threads at once do not interfere.
TEST(ThreadPoolTest, IndependentPoolsRunConcurrently) {
  std::vector<std::thread> users;
  std::atomic<int64_t> total{0};
  for (int t = 0; t < 3; ++t) {
    users.emplace_back([&] {
      ThreadPool pool(2);
      for (int round = 0; round < 100; ++round) {
        pool.ParallelFor(100, 1, [&](int64_t begin, int64_t end) { total += end - begin; });
      }
    });
  }
  for (auto& user : users) user.join();
  EXPECT_EQ(total.load(), 3 * 100 * 100);
}

TEST(ThreadPoolTest, NullPoolRunsInline) {
  int64_t sum = 0;
  ParallelFor(nullptr, 10, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) sum += i;
  });
  EXPECT_EQ(sum, 45);
}

}  // namespace
}  // namespace lserve
