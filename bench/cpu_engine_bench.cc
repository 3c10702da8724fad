// CPU engine throughput on a ~100M-parameter synthetic Llama: decode and prefill tokens/s
// at batch 1 and 8, beside the memory-bandwidth limit of batch-1 decode (the bytes of
// weights streamed per token over the measured copy bandwidth).
//
// Usage: cpu_engine_bench [--threads=N] [--json=PATH]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "bench/bench_report.h"
#include "bench/memory_bandwidth.h"
#include "worker/engine.h"
#include "worker/model/synthetic_model.h"

namespace lserve {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::vector<int32_t> Prompt(int n, int salt) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back((i * 7919 + salt * 104729) % 31000 + 3);
  return ids;
}

struct Throughput {
  double prefill_tokens_per_s = 0.0;
  double decode_tokens_per_s = 0.0;
  double decode_step_ms = 0.0;
};

// Prefills `batch` prompts of prompt_len tokens in one step each, then decodes every
// sequence `steps` times; the median decode step sets the decode rate.
Throughput Measure(Engine& engine, int batch, int prompt_len, int steps) {
  std::vector<StepInput> prefill;
  for (int b = 0; b < batch; ++b) {
    if (!engine.AddSequence(b).ok()) std::abort();
    prefill.push_back({b, Prompt(prompt_len, b), StepPhase::kPrefill, LogitRows::kLast});
  }
  const Clock::time_point start = Clock::now();
  if (!engine.Step(prefill).ok()) std::abort();
  Throughput result;
  result.prefill_tokens_per_s = batch * prompt_len / Seconds(start);
  std::vector<double> step_s;
  for (int s = 0; s < steps; ++s) {
    std::vector<StepInput> decode;
    for (int b = 0; b < batch; ++b)
      decode.push_back({b, {(s * 31 + b) % 31000 + 3}, StepPhase::kDecode, LogitRows::kLast});
    const Clock::time_point t = Clock::now();
    if (!engine.Step(decode).ok()) std::abort();
    step_s.push_back(Seconds(t));
  }
  std::sort(step_s.begin(), step_s.end());
  result.decode_step_ms = step_s[step_s.size() / 2] * 1e3;
  result.decode_tokens_per_s = batch / step_s[step_s.size() / 2];
  for (int b = 0; b < batch; ++b) {
    if (!engine.FreeSequence(b).ok()) std::abort();
  }
  return result;
}

int Main(int argc, char** argv) {
  const int threads = std::stoi(bench::FlagValue(argc, argv, "threads", "0"));
  const ModelConfig config = Synthetic100MConfig();
  auto weights = MakeSyntheticWeights(config, 1);
  if (!weights.ok()) return 1;
  EngineOptions options;
  options.num_threads = threads;
  options.attention = SparseAttentionConfig::Dense();
  options.max_sequences = 8;
  auto engine = Engine::Create(*std::move(weights), options);
  if (!engine.ok()) return 1;
  ThreadPool bandwidth_pool(threads);
  ThreadPool* pool = &bandwidth_pool;

  // Bytes a decode step must stream: every linear weight and the lm_head (the embedding
  // table is only gathered from).
  const int64_t h = config.hidden_size, q = int64_t{config.num_heads} * config.head_dim;
  const int64_t kv = int64_t{config.num_kv_heads} * config.head_dim;
  const int64_t per_layer = h * q * 2 + h * kv * 2 + 3 * h * config.intermediate_size;
  const double weight_bytes =
      4.0 * (per_layer * config.num_layers + int64_t{config.vocab_size} * h);
  const double copy_gbs = bench::MeasureCopyBandwidthGBs(pool, size_t{1} << 30);
  const double limit_tokens_per_s = copy_gbs * 1e9 / weight_bytes;

  nlohmann::json report = {{"provenance", bench::Provenance(argc, argv)},
                           {"model",
                            "Synthetic100MConfig (llama, hidden 768, 12 layers, 12 "
                            "heads, 4 kv heads, ffn 2048, vocab 32000), float32"},
                           {"parameters", config.NumParameters()},
                           {"threads", pool->num_threads()},
                           {"copy_bandwidth_gbs", copy_gbs},
                           {"decode_weight_bytes_per_step", weight_bytes},
                           {"batch1_decode_limit_tokens_per_s", limit_tokens_per_s}};
  std::printf("model: %.1fM parameters, %.0f MB of weights streamed per decode step\n",
              config.NumParameters() / 1e6, weight_bytes / 1e6);
  std::printf("copy bandwidth %.1f GB/s (read + write) -> batch-1 decode limit %.1f tok/s\n\n",
              copy_gbs, limit_tokens_per_s);
  std::printf("%6s %8s %14s %14s %12s %10s\n", "batch", "prompt", "prefill tok/s", "decode tok/s",
              "decode ms", "% limit");
  for (int batch : {1, 8}) {
    const int prompt_len = 128;
    const Throughput t = Measure(**engine, batch, prompt_len, 24);
    const double share = 100.0 * t.decode_tokens_per_s / limit_tokens_per_s;
    std::printf("%6d %8d %14.1f %14.1f %12.2f %9.1f%%\n", batch, prompt_len, t.prefill_tokens_per_s,
                t.decode_tokens_per_s, t.decode_step_ms, share);
    report["runs"].push_back({{"batch", batch},
                              {"prompt_tokens", prompt_len},
                              {"prefill_tokens_per_s", t.prefill_tokens_per_s},
                              {"decode_tokens_per_s", t.decode_tokens_per_s},
                              {"decode_step_ms", t.decode_step_ms},
                              {"decode_share_of_batch1_limit_percent", share}});
  }
  return bench::WriteReport(report, bench::FlagValue(argc, argv, "json")) ? 0 : 1;
}

}  // namespace
}  // namespace lserve

int main(int argc, char** argv) { return lserve::Main(argc, argv); }
