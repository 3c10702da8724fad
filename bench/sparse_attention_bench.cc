// Dense vs hybrid sparse attention on the CPU backend, one layer of Llama-3-8B head
// geometry (32 query heads, 8 KV heads, head_dim 128), at 4K-64K tokens of context.
//
//  * prefill: a 512-token chunk at the end of the context (chunked prefill's steady
//    state: the chunk attends to all earlier KV through the paged cache);
//  * decode: one token after the context: a step that scores pages, a step that reuses
//    the selection, and their average over the reuse interval (1 scoring + 3 reuse).
// The hybrid setting is LServe's: streaming ratio 0.5, sink 128 + local 8192 in prefill
// and 256 in decode, pages of 64 (logical 16), token budget 4096. Beside each measured
// speedup stands the ideal 1/(1-r), r the share of dense tiles skipped.
//
// Usage: sparse_attention_bench [--contexts=4096,8192,...] [--threads=N] [--json=PATH]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_report.h"
#include "kernels/backend_registry.h"
#include "kernels/cpu/cpu_backend.h"
#include "worker/attention/head_classifier.h"
#include "worker/attention/hybrid_attention.h"
#include "worker/attention/kv_writer.h"

namespace lserve {
namespace {

constexpr int kHeads = 32, kKvHeads = 8, kDim = 128, kChunk = 512;

using Clock = std::chrono::steady_clock;

struct Timing {
  double seconds = 0.0;
  int64_t tiles_visited = 0;
  int64_t tiles_dense = 0;
};

struct Measurement {
  Timing prefill, decode_scoring, decode_reuse;
};

// Fills a one-layer store with `context` random tokens (the same data for every config),
// then times the last prefill chunk and a decode step through HybridAttention.
Measurement Measure(const SparseAttentionConfig& config, int64_t context, Backend* backend,
                    int repeats) {
  KvStoreConfig kv;
  kv.num_layers = 1;
  kv.num_kv_heads = kKvHeads;
  kv.head_dim = kDim;
  kv.page_size = config.page_size;
  kv.logical_page_size = config.logical_page_size;
  kv.layout = *HeadLayoutFor(config, 1, kKvHeads);
  kv.sink = config.sink;
  kv.prefill_local = config.prefill_local;
  kv.decode_local = config.decode_local;
  kv.max_chunk_tokens = 2048;
  kv.num_dense_pages = (context + 1 + kv.page_size - 1) / kv.page_size;
  kv.num_streaming_pages = 400;
  auto store = *KvStore::Create(kv, HostMemory());
  auto writer = *KvWriter::Create(store.get(), backend);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int width = kKvHeads * kDim;
  auto append = [&](int64_t n, bool decode) {
    std::vector<float> k(n * width), v(n * width);
    for (float& x : k) x = normal(rng);
    for (float& x : v) x = normal(rng);
    const float* k_ptr = k.data();
    const float* v_ptr = v.data();
    if (!writer->Append(0, n, decode, {&k_ptr, 1}, {&v_ptr, 1}).ok()) std::abort();
  };
  for (int64_t done = 0; done < context - kChunk;) {
    const int64_t n = std::min<int64_t>(2048, context - kChunk - done);
    append(n, false);
    done += n;
  }
  std::vector<float> q(kChunk * kHeads * kDim), out(q.size());
  for (float& x : q) x = normal(rng);
  auto attention = *HybridAttention::Create(store.get(), config, kHeads, backend);
  auto time_call = [&](const AttentionSequence& s) {
    const AttentionStats before = attention->stats();
    std::vector<double> seconds;
    for (int r = 0; r < repeats; ++r) {
      const Clock::time_point start = Clock::now();
      backend->BeginStep();
      AttentionPlan plan;
      if (!plan.Build(*store, {&s, 1}, config, backend).ok()) std::abort();
      if (!attention->Run(0, plan, q.data(), out.data()).ok()) std::abort();
      seconds.push_back(std::chrono::duration<double>(Clock::now() - start).count());
    }
    std::sort(seconds.begin(), seconds.end());
    return Timing{seconds[seconds.size() / 2],
                  (attention->stats().tiles_visited - before.tiles_visited) / repeats,
                  (attention->stats().tiles_dense - before.tiles_dense) / repeats};
  };
  append(kChunk, false);
  Measurement m;
  m.prefill = time_call({0, 0, kChunk, context - kChunk, false, 0});
  append(1, true);
  // Step 0 of the reuse interval scores pages; the steps after it reuse the selection.
  m.decode_scoring = time_call({0, 0, 1, context, true, 0});
  m.decode_reuse = time_call({0, 0, 1, context, true, 1});
  return m;
}

int Main(int argc, char** argv) {
  std::vector<int64_t> contexts;
  for (absl::string_view part : absl::StrSplit(
           bench::FlagValue(argc, argv, "contexts", "4096,8192,16384,32768,65536"), ',')) {
    int64_t value;
    if (!absl::SimpleAtoi(part, &value) || value <= kChunk) return 2;
    contexts.push_back(value);
  }
  const int threads = std::stoi(bench::FlagValue(argc, argv, "threads", "0"));
  auto backend = CreateBackend("cpu", {threads, 0});
  if (!backend.ok()) return 1;
  const int num_threads = static_cast<CpuBackend&>(**backend).pool()->num_threads();
  SparseAttentionConfig dense = SparseAttentionConfig::Dense();
  SparseAttentionConfig hybrid;  // LServe defaults
  SparseAttentionConfig hybrid_kv = hybrid;
  hybrid_kv.scoring = PageScoring::kPerKvHead;
  nlohmann::json report = {{"provenance", bench::Provenance(argc, argv)},
                           {"geometry", "1 layer, 32 query heads, 8 KV heads, head_dim 128"},
                           {"threads", num_threads},
                           {"prefill_chunk", kChunk}};
  std::printf("%8s %15s %10s %10s %9s %8s %11s\n", "context", "phase", "dense ms", "hybrid ms",
              "speedup", "ideal", "kv-head ms");
  for (int64_t context : contexts) {
    const int repeats = context >= 32768 ? 1 : 3;
    const Measurement d = Measure(dense, context, backend->get(), repeats);
    const Measurement h = Measure(hybrid, context, backend->get(), repeats);
    const Measurement k = Measure(hybrid_kv, context, backend->get(), repeats);
    // A reuse interval of 4: one scoring step, then three reuse steps.
    const auto amortized = [&](const Measurement& m) {
      return Timing{
          (m.decode_scoring.seconds + (hybrid.reuse_interval - 1) * m.decode_reuse.seconds) /
              hybrid.reuse_interval,
          m.decode_reuse.tiles_visited, m.decode_reuse.tiles_dense};
    };
    for (const auto& [phase, dt, ht, kt] :
         {std::tuple{"prefill", d.prefill, h.prefill, k.prefill},
          std::tuple{"decode(score)", d.decode_scoring, h.decode_scoring, k.decode_scoring},
          std::tuple{"decode(reuse)", d.decode_reuse, h.decode_reuse, k.decode_reuse},
          std::tuple{"decode(avg)", d.decode_reuse, amortized(h), amortized(k)}}) {
      const double speedup = dt.seconds / ht.seconds;
      const double ideal = double(ht.tiles_dense) / std::max<int64_t>(1, ht.tiles_visited);
      std::printf("%8ld %15s %10.2f %10.2f %8.2fx %7.2fx %11.2f\n", static_cast<long>(context),
                  phase, dt.seconds * 1e3, ht.seconds * 1e3, speedup, ideal, kt.seconds * 1e3);
      report["runs"].push_back({{"context", context},
                                {"phase", phase},
                                {"dense_ms", dt.seconds * 1e3},
                                {"hybrid_ms", ht.seconds * 1e3},
                                {"hybrid_kv_head_scoring_ms", kt.seconds * 1e3},
                                {"speedup", speedup},
                                {"tiles_dense", ht.tiles_dense},
                                {"tiles_visited", ht.tiles_visited},
                                {"skipped_ratio", 1.0 - 1.0 / ideal},
                                {"ideal_speedup", ideal}});
    }
  }
  return bench::WriteReport(report, bench::FlagValue(argc, argv, "json")) ? 0 : 1;
}

}  // namespace
}  // namespace lserve

int main(int argc, char** argv) { return lserve::Main(argc, argv); }
