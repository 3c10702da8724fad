#include "bench/memory_bandwidth.h"

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>

namespace lserve::bench {
namespace {

constexpr int kRepeats = 5;

// Splits [0, bytes) into `slices` contiguous pieces run on the pool. The buffers are first
// written this way too, so page faults stay out of the timed copies and, on NUMA machines,
// pages land near the threads that use them.
void ForEachSlice(ThreadPool* pool, size_t bytes, int64_t slices,
                  const std::function<void(size_t, size_t)>& fn) {
  const size_t slice = (bytes + slices - 1) / slices;
  ParallelFor(pool, slices, 1, [&](int64_t s0, int64_t s1) {
    for (int64_t s = s0; s < s1; ++s) {
      const size_t begin = std::min(bytes, static_cast<size_t>(s) * slice);
      const size_t end = std::min(bytes, begin + slice);
      if (end > begin) fn(begin, end - begin);
    }
  });
}

}  // namespace

double MeasureCopyBandwidthGBs(ThreadPool* pool, size_t bytes) {
  if (bytes == 0) return 0.0;
  auto src = std::make_unique_for_overwrite<unsigned char[]>(bytes);
  auto dst = std::make_unique_for_overwrite<unsigned char[]>(bytes);
  const int threads = pool ? pool->num_threads() : 1;
  const int64_t slices = 4 * static_cast<int64_t>(threads);
  ForEachSlice(pool, bytes, slices, [&](size_t off, size_t len) {
    std::memset(src.get() + off, 1, len);
    std::memset(dst.get() + off, 0, len);
  });

  double best_seconds = 0.0;
  for (int r = 0; r < kRepeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    ForEachSlice(pool, bytes, slices, [&](size_t off, size_t len) {
      std::memcpy(dst.get() + off, src.get() + off, len);
    });
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    if (r == 0 || elapsed.count() < best_seconds) best_seconds = elapsed.count();
  }
  return 2.0 * static_cast<double>(bytes) / best_seconds / 1e9;
}

}  // namespace lserve::bench
