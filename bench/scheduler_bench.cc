// The scheduler on the CPU backend:
//  * overhead: scheduler time per step (everything in Scheduler::Step outside the engine)
//    with 1, 64 and 256 requests decoding, on the built-in tiny model, with and without
//    prefix caching;
//  * throughput: requests of the ~100M synthetic model (Synthetic100MConfig) at
//    concurrency 1-64, each a 1088-token prompt and 32 generated tokens, with prefix
//    caching on; the prompts either share a 1024-token prefix or are all different.
//
// Usage: scheduler_bench [--threads=N] [--concurrency=1,4,16,64] [--json=PATH]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_report.h"
#include "worker/model/synthetic_model.h"
#include "worker/scheduler/scheduler.h"

namespace lserve {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::vector<int32_t> Tokens(int n, int salt, int vocab) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back((i * 7919 + salt * 104729 + 17) % (vocab - 3) + 3);
  return ids;
}

struct Overhead {
  double schedule_us_per_step = 0.0;
  double engine_ms_per_step = 0.0;
};

Overhead MeasureOverhead(int running, bool prefix_caching, int threads) {
  EngineOptions options;
  options.num_threads = threads;
  options.attention = SparseAttentionConfig::Dense();
  options.attention.page_size = 16;
  options.max_sequences = running;
  options.num_dense_pages = int64_t{running} * 8;
  options.prefix_caching = prefix_caching;
  auto engine = *Engine::Create(*MakeSyntheticWeights(TinySyntheticConfig(), 1), options);
  SchedulerOptions scheduling;
  scheduling.max_running = running;
  scheduling.max_waiting = running;
  scheduling.max_step_tokens = 4096;
  auto scheduler = *Scheduler::Create(engine.get(), scheduling);
  for (int i = 0; i < running; ++i) {
    GenerationRequest request;
    request.prompt = Tokens(20, i % 8, 512);  // eight shared prompts: cache hits when on
    request.sampling.max_tokens = 100;
    if (!scheduler->Submit(request).ok()) std::abort();
  }
  // Until every request is decoding, then a measured stretch of decode steps.
  for (int i = 0; i < 20; ++i) scheduler->Step();
  const SchedulerStats before = scheduler->stats();
  const int steps = 50;
  for (int i = 0; i < steps; ++i) scheduler->Step();
  const SchedulerStats after = scheduler->stats();
  if (after.running != running) std::abort();
  Overhead overhead;
  overhead.schedule_us_per_step = (after.schedule_seconds - before.schedule_seconds) / steps * 1e6;
  overhead.engine_ms_per_step = (after.engine_seconds - before.engine_seconds) / steps * 1e3;
  return overhead;
}

struct Throughput {
  double wall_s = 0.0;
  int64_t prompt_tokens = 0;
  int64_t computed_prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double mean_ttft_s = 0.0;
};

Throughput MeasureThroughput(Engine& engine, int concurrency, bool shared_prefix, int salt) {
  SchedulerOptions scheduling;
  scheduling.max_running = concurrency;
  scheduling.max_waiting = concurrency;
  auto scheduler = *Scheduler::Create(&engine, scheduling);
  const int vocab = engine.config().vocab_size;
  Throughput result;
  const Clock::time_point start = Clock::now();
  for (int i = 0; i < concurrency; ++i) {
    GenerationRequest request;
    request.prompt = Tokens(1024, shared_prefix ? salt : salt * 1000 + i, vocab);
    const std::vector<int32_t> suffix = Tokens(64, salt * 1000 + i + 500, vocab);
    request.prompt.insert(request.prompt.end(), suffix.begin(), suffix.end());
    request.sampling.max_tokens = 32;
    result.prompt_tokens += static_cast<int64_t>(request.prompt.size());
    if (!scheduler->Submit(request).ok()) std::abort();
  }
  while (scheduler->HasWork()) {
    for (const RequestEvent& event : scheduler->Step()) {
      result.generated_tokens += static_cast<int64_t>(event.tokens.size());
      if (!event.finished) continue;
      if (!event.status.ok()) std::abort();
      result.mean_ttft_s += event.timings.time_to_first_token_s / concurrency;
      result.computed_prompt_tokens += event.timings.prefill_tokens;
    }
  }
  result.wall_s = Seconds(start);
  return result;
}

int Main(int argc, char** argv) {
  const int threads = std::stoi(bench::FlagValue(argc, argv, "threads", "0"));
  std::vector<int> levels;
  for (absl::string_view part :
       absl::StrSplit(bench::FlagValue(argc, argv, "concurrency", "1,4,16,64"), ',')) {
    int value;
    if (!absl::SimpleAtoi(part, &value) || value <= 0) return 2;
    levels.push_back(value);
  }
  nlohmann::json report = {{"provenance", bench::Provenance(argc, argv)}};

  std::printf("scheduler overhead per step (tiny model, dense attention, decoding requests)\n");
  std::printf("%8s %8s %16s %16s\n", "running", "prefix", "schedule us/step", "engine ms/step");
  for (int running : {1, 64, 256}) {
    for (bool prefix : {false, true}) {
      const Overhead o = MeasureOverhead(running, prefix, threads);
      std::printf("%8d %8s %16.1f %16.2f\n", running, prefix ? "cached" : "off",
                  o.schedule_us_per_step, o.engine_ms_per_step);
      report["overhead"].push_back({{"running", running},
                                    {"prefix_caching", prefix},
                                    {"schedule_us_per_step", o.schedule_us_per_step},
                                    {"engine_ms_per_step", o.engine_ms_per_step}});
    }
  }

  const ModelConfig config = Synthetic100MConfig();
  EngineOptions options;
  options.num_threads = threads;
  options.attention = SparseAttentionConfig::Dense();
  options.max_sequences = levels.empty() ? 1 : *std::max_element(levels.begin(), levels.end());
  options.num_dense_pages = int64_t{options.max_sequences} * 18;  // 1120 tokens of 64
  options.prefix_caching = true;
  auto engine = Engine::Create(*MakeSyntheticWeights(config, 1), options);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    return 1;
  }
  report["model"] = "Synthetic100MConfig, float32, dense attention, prefix caching on";
  report["request"] = "1088-token prompt (a 1024-token prefix + 64 own tokens), 32 generated";
  std::printf("\nthroughput (%.0fM-parameter model, 1088-token prompts, 32 generated)\n",
              config.NumParameters() / 1e6);
  std::printf("%11s %9s %9s %12s %12s %12s %10s\n", "concurrency", "prefix", "wall s",
              "computed tok", "gen tok/s", "total tok/s", "mean TTFT");
  int salt = 1;
  for (int concurrency : levels) {
    for (bool shared : {false, true}) {
      const Throughput t = MeasureThroughput(**engine, concurrency, shared, salt++);
      const double gen_rate = t.generated_tokens / t.wall_s;
      const double total_rate = (t.prompt_tokens + t.generated_tokens) / t.wall_s;
      std::printf("%11d %9s %9.2f %12ld %12.1f %12.1f %9.2fs\n", concurrency,
                  shared ? "shared" : "distinct", t.wall_s,
                  static_cast<long>(t.computed_prompt_tokens), gen_rate, total_rate, t.mean_ttft_s);
      report["throughput"].push_back({{"concurrency", concurrency},
                                      {"shared_prefix", shared},
                                      {"wall_s", t.wall_s},
                                      {"prompt_tokens", t.prompt_tokens},
                                      {"computed_prompt_tokens", t.computed_prompt_tokens},
                                      {"generated_tokens", t.generated_tokens},
                                      {"generated_tokens_per_s", gen_rate},
                                      {"total_tokens_per_s", total_rate},
                                      {"mean_time_to_first_token_s", t.mean_ttft_s}});
    }
  }
  return bench::WriteReport(report, bench::FlagValue(argc, argv, "json")) ? 0 : 1;
}

}  // namespace
}  // namespace lserve

int main(int argc, char** argv) { return lserve::Main(argc, argv); }
