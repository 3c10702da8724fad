// Throughput of the CPU backend's Linear kernel against the machine's copy bandwidth.
// Usage: cpu_kernels_bench [--json=PATH]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "bench/bench_report.h"
#include "bench/memory_bandwidth.h"
#include "common/thread_pool.h"
#include "kernels/cpu/matmul.h"
#include "nlohmann/json.hpp"

namespace lserve::bench {
namespace {

struct Shape {
  int64_t m, k, n;
  const char* note;
};

// Decode GEMV (m = 1), batched decode (m = 8) and a prefill chunk (m = 256) at GPT-2 /
// small-Llama widths; the last pair streams 1 GiB of weights, more than any cache, so it
// shows DRAM-bound GEMV.
constexpr Shape kShapes[] = {
    {1, 768, 2048, ""},
    {1, 2048, 768, ""},
    {1, 768, 32000, ""},
    {8, 768, 2048, ""},
    {8, 2048, 768, ""},
    {8, 768, 32000, ""},
    {256, 768, 2048, ""},
    {1, 8192, 32768, "1 GiB weights"},
    {8, 8192, 32768, "1 GiB weights"},
};

constexpr int kWarmups = 3;
constexpr int kMinRepeats = 15;
constexpr double kMinSeconds = 0.5;

// Cheap deterministic fill: the values do not affect speed, but denormals and NaNs would.
void Fill(std::vector<float>& v, uint32_t seed) {
  uint32_t s = seed * 2654435761u + 1;
  for (float& f : v) {
    s = s * 1664525u + 1013904223u;
    f = static_cast<float>(s >> 8) * (2.0f / 16777216.0f) - 1.0f;
  }
}

double MedianSeconds(const std::function<void()>& fn) {
  for (int i = 0; i < kWarmups; ++i) fn();
  std::vector<double> samples;
  double total = 0.0;
  while (static_cast<int>(samples.size()) < kMinRepeats || total < kMinSeconds) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    const std::chrono::duration<double> elapsed = std::chrono::steady_clock::now() - start;
    samples.push_back(elapsed.count());
    total += elapsed.count();
  }
  std::nth_element(samples.begin(), samples.begin() + samples.size() / 2, samples.end());
  return samples[samples.size() / 2];
}

int Main(int argc, char** argv) {
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.starts_with("--json=")) {
      json_path = std::string(arg.substr(7));
    } else {
      std::fprintf(stderr, "usage: %s [--json=PATH]\n", argv[0]);
      return 2;
    }
  }

  const int kThreadCounts[] = {1, 2};
  nlohmann::json report;
  report["provenance"] = bench::Provenance(argc, argv);
  report["copy_bandwidth_gbs"] = nlohmann::json::object();
  double copy_gbs[3] = {};
  std::printf("%-28s %8s\n", "copy bandwidth (read+write)", "GB/s");
  for (int threads : kThreadCounts) {
    ThreadPool pool(threads);
    copy_gbs[threads] = MeasureCopyBandwidthGBs(&pool);
    std::printf("  %d thread%-18s %8.1f\n", threads, threads == 1 ? "" : "s", copy_gbs[threads]);
    report["copy_bandwidth_gbs"][std::to_string(threads)] = copy_gbs[threads];
  }

  std::printf("\n%-22s %7s %10s %9s %13s %9s  %s\n", "Linear (m, k, n)", "threads", "median ms",
              "GFLOP/s", "weight GB/s", "% of copy", "");
  report["linear"] = nlohmann::json::array();
  for (const Shape& s : kShapes) {
    std::vector<float> x(s.m * s.k), w(s.n * s.k), y(s.m * s.n);
    Fill(x, 1);
    Fill(w, 2);
    for (int threads : kThreadCounts) {
      ThreadPool pool(threads);
      const double sec = MedianSeconds(
          [&] { cpu::Linear(x.data(), s.m, s.k, w.data(), s.n, nullptr, y.data(), &pool); });
      const double gflops = 2.0 * s.m * s.k * s.n / sec / 1e9;
      const double weight_gbs = 4.0 * s.k * s.n / sec / 1e9;
      const double fraction = weight_gbs / copy_gbs[threads];
      char label[64];
      std::snprintf(label, sizeof(label), "(%lld, %lld, %lld)", static_cast<long long>(s.m),
                    static_cast<long long>(s.k), static_cast<long long>(s.n));
      std::printf("%-22s %7d %10.3f %9.1f %13.1f %8.0f%%  %s\n", label, threads, sec * 1e3, gflops,
                  weight_gbs, 100.0 * fraction, s.note);
      report["linear"].push_back({{"m", s.m},
                                  {"k", s.k},
                                  {"n", s.n},
                                  {"threads", threads},
                                  {"median_ms", sec * 1e3},
                                  {"gflops", gflops},
                                  {"weight_gbs", weight_gbs},
                                  {"fraction_of_copy_bandwidth", fraction},
                                  {"note", s.note}});
    }
  }

  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << report.dump(2) << "\n";
    if (!out) {
      std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace lserve::bench

int main(int argc, char** argv) { return lserve::bench::Main(argc, argv); }
