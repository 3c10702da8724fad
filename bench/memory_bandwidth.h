// Measures the machine's sustainable memory copy bandwidth, the ceiling that decode-time
// weight streaming (GEMV) is judged against.
#ifndef LSERVE_BENCH_MEMORY_BANDWIDTH_H_
#define LSERVE_BENCH_MEMORY_BANDWIDTH_H_

#include <cstddef>

#include "common/thread_pool.h"

namespace lserve::bench {

// Copies a `bytes`-sized buffer into another, split across the threads of `pool` (or on
// the calling thread when null), and returns the best of several repeats in GB/s (1e9
// bytes per second), counting bytes read plus bytes written (2 × bytes per copy). The
// buffers should be far larger than the last-level cache.
double MeasureCopyBandwidthGBs(ThreadPool* pool, size_t bytes = size_t{512} << 20);

}  // namespace lserve::bench

#endif  // LSERVE_BENCH_MEMORY_BANDWIDTH_H_
