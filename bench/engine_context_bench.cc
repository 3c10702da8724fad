// End-to-end long-context engine benchmark, dense against hybrid, on any backend:
//  * time to first token of one prompt of N tokens, prefilled in chunks as the scheduler
//    runs it, ending with the first sampled token on the host;
//  * decode milliseconds per step (the mean; the median too in the JSON) at batch 1 and 8
//    with every sequence holding N tokens
//    (the first sequence's KV is prefilled once, then imported into distinct pages for
//    the others, so no two sequences share memory);
//  * beside dense decode, the time to read the weights and the KV of one step once at
//    --bandwidth_gbs;
//  * where the build can trace the device (CUDA, CUPTI), --trace_steps more decode steps
//    traced: the fraction of their wall time the device was busy and its idle time
//    between steps ("busy", "gap us"), and the JSON attributes idle time to the pairs of
//    activities around it.
// The model is synthetic (seeded random weights) at a named geometry, Llama-3-8B by
// default. Hybrid mode: streaming heads from the Llama-3-8B-Instruct-Gradient-1048k
// pattern in ../shared at ratio 0.5 (a seeded choice for other geometries or
// --gates=none), page selection with budget 4096, reuse 4.
//
// Usage: engine_context_bench [--backend=cpu|cuda] [--geometry=llama3-8b|100m|tiny]
//   [--layers=N] [--contexts=32768,65536,131072,262144] [--batches=1,8]
//   [--modes=dense,hybrid] [--chunk=8192] [--decode_steps=16] [--kv_cache_gb=0]
//   [--bandwidth_gbs=4800] [--warmup_steps=8] [--trace_steps=8] [--replay=1]
//   [--page_scoring=query_head|kv_head] [--gates=PATH|none] [--json=PATH]
// --replay=0 launches decode steps op by op instead of replaying them as CUDA graphs.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_report.h"
#include "bench/device_trace.h"
#include "worker/engine.h"
#include "worker/model/synthetic_model.h"

namespace lserve {
namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "engine_context_bench: %s: %s\n", what, status.ToString().c_str());
    std::exit(1);
  }
}

int32_t Token(int64_t i, int vocab) {
  return static_cast<int32_t>((i * 7919 + 13) % (vocab - 3)) + 3;
}

// Prefills `seq` with `length` tokens in chunks; returns the milliseconds until the first
// sampled token is on the host.
double Prefill(Engine& engine, SeqId seq, int64_t length, int64_t chunk) {
  Check(engine.AddSequence(seq), "AddSequence");
  const Clock::time_point start = Clock::now();
  for (int64_t done = 0; done < length;) {
    const int64_t n = std::min(chunk, length - done);
    StepInput input{seq, {}, StepPhase::kPrefill, LogitRows::kNone};
    for (int64_t i = 0; i < n; ++i)
      input.tokens.push_back(Token(done + i, engine.config().vocab_size));
    input.sample = done + n == length;  // greedy first token
    absl::StatusOr<std::vector<StepOutput>> out = engine.Step({input});
    Check(out.status(), "prefill step");
    done += n;
  }
  return Ms(start);
}

std::vector<StepInput> DecodeInputs(const Engine& engine, int batch, int step) {
  std::vector<StepInput> inputs;
  for (int b = 0; b < batch; ++b) {
    StepInput input{b,
                    {Token(step * 31 + b, engine.config().vocab_size)},
                    StepPhase::kDecode,
                    LogitRows::kNone};
    input.sample = true;
    inputs.push_back(std::move(input));
  }
  return inputs;
}

struct DecodeStepTimes {
  double mean_ms = 0;  // what a token costs on average: page selection recurs in some steps
  double median_ms = 0;
};

// Milliseconds of a decode step over sequences 0 .. batch - 1, after `warmup` untimed
// steps (enough for every recurring step shape to be captured as a graph: page selection
// recurs every reuse_interval steps, and each shape is captured on its second run). Keep
// `steps` a multiple of the reuse interval so that the mean weighs its steps fairly.
DecodeStepTimes TimeDecodeSteps(Engine& engine, int batch, int warmup, int steps) {
  std::vector<double> ms;
  for (int s = 0; s < warmup + steps; ++s) {
    std::vector<StepInput> inputs = DecodeInputs(engine, batch, s);
    const Clock::time_point start = Clock::now();
    Check(engine.Step(inputs).status(), "decode step");
    if (s >= warmup) ms.push_back(Ms(start));
  }
  DecodeStepTimes times;
  for (double m : ms) times.mean_ms += m / ms.size();
  std::sort(ms.begin(), ms.end());
  times.median_ms = ms[ms.size() / 2];
  return times;
}

// `steps` more decode steps back to back under the device tracer (untimed, since tracing
// adds a little to each launch): how busy the device was and how long it idled between
// steps. Null where the build has no tracer.
nlohmann::json TraceDecodeSteps(Engine& engine, int batch, int steps) {
  absl::StatusOr<std::unique_ptr<bench::DeviceTrace>> trace = bench::DeviceTrace::Start();
  if (!trace.ok()) return nullptr;
  // One step before the window: the first launches after tracing starts wait milliseconds
  // for the tracer to set up.
  for (int s = -1; s < steps; ++s) {
    std::vector<StepInput> inputs = DecodeInputs(engine, batch, 1000 + s);
    if (s >= 0) (*trace)->MarkStep();
    Check(engine.Step(inputs).status(), "traced decode step");
  }
  absl::StatusOr<bench::DeviceTraceSummary> summary = (*trace)->Finish();
  Check(summary.status(), "device trace");
  return {{"steps", summary->steps},
          {"kernels_per_step", static_cast<double>(summary->kernels) / summary->steps},
          {"copies_per_step", static_cast<double>(summary->copies) / summary->steps},
          {"window_ms", summary->window_ms},
          {"busy_ms", summary->busy_ms},
          {"busy_fraction", summary->busy_fraction},
          {"max_gap_us", summary->max_gap_us},
          {"mean_step_gap_us", summary->mean_step_gap_us},
          {"max_step_gap_us", summary->max_step_gap_us},
          {"idle_us_per_step_by_neighbours", summary->idle_by_neighbours},
          {"busy_us_per_step_by_activity", summary->busy_by_activity}};
}

struct Setup {
  ModelConfig config;
  EngineOptions options;
};

absl::StatusOr<std::unique_ptr<Engine>> MakeEngine(const Setup& setup, uint64_t seed) {
  absl::StatusOr<ModelWeights> weights = MakeSyntheticWeights(setup.config, seed);
  if (!weights.ok()) return weights.status();
  return Engine::Create(*std::move(weights), setup.options);
}

int Main(int argc, char** argv) {
  using bench::FlagValue;
  using bench::IntList;
  const std::string geometry = FlagValue(argc, argv, "geometry", "llama3-8b");
  ModelConfig config = geometry == "tiny"   ? TinySyntheticConfig()
                       : geometry == "100m" ? Synthetic100MConfig()
                                            : Llama3_8BConfig();
  if (const std::string layers = FlagValue(argc, argv, "layers"); !layers.empty()) {
    config.num_layers = std::stoi(layers);
  }
  const std::vector<int64_t> contexts = IntList(
      FlagValue(argc, argv, "contexts", "32768,65536,131072,262144"), "engine_context_bench");
  const std::vector<int64_t> batches =
      IntList(FlagValue(argc, argv, "batches", "1,8"), "engine_context_bench");
  const std::vector<std::string> modes =
      absl::StrSplit(FlagValue(argc, argv, "modes", "dense,hybrid"), ',', absl::SkipEmpty());
  const int64_t chunk = std::stoll(FlagValue(argc, argv, "chunk", "8192"));
  const int steps = std::stoi(FlagValue(argc, argv, "decode_steps", "16"));
  const int trace_steps = std::stoi(FlagValue(argc, argv, "trace_steps", "8"));
  const int warmup_steps = std::stoi(FlagValue(argc, argv, "warmup_steps", "8"));
  const std::string scoring_name = FlagValue(argc, argv, "page_scoring", "query_head");
  PageScoring scoring = PageScoring::kPerQueryHead;
  Check(ParsePageScoring(scoring_name, &scoring), "--page_scoring");
  const double bandwidth_gbs = std::stod(FlagValue(argc, argv, "bandwidth_gbs", "4800"));
  const int max_batch = static_cast<int>(*std::max_element(batches.begin(), batches.end()));
  // Sequence 0 decodes warm-up, timed and traced steps at every batch size after its prompt.
  config.max_position_embeddings = static_cast<int>(std::max<int64_t>(
      config.max_position_embeddings,
      *std::max_element(contexts.begin(), contexts.end()) +
          (warmup_steps + steps + trace_steps + 1) * static_cast<int64_t>(batches.size()) + 8));
  std::string gates = FlagValue(argc, argv, "gates");
  if (gates.empty() && geometry == "llama3-8b") {
    gates = std::string(LSERVE_SHARED_DIR) +
            "/attn_patterns/Llama-3-8B-Instruct-Gradient-1048k/full_attention_heads.tsv";
  }
  if (gates == "none") gates.clear();

  Setup setup;
  setup.config = config;
  setup.options.backend = FlagValue(argc, argv, "backend", "cpu");
  setup.options.max_sequences = max_batch;
  setup.options.max_chunk_tokens = chunk;
  setup.options.replay_decode_steps = FlagValue(argc, argv, "replay", "1") != "0";
  // 0: the engine's own sizing (on a GPU, gpu_memory_utilization of the memory free after
  // the weights and activations).
  setup.options.max_kv_cache_bytes =
      static_cast<int64_t>(std::stod(FlagValue(argc, argv, "kv_cache_gb", "0")) * (1 << 30));
  nlohmann::json report = bench::Provenance(argc, argv);
  report["backend"] = setup.options.backend;
  report["geometry"] = geometry;
  report["layers"] = config.num_layers;
  report["parameters"] = config.NumParameters();
  report["gates"] = gates;
  report["replay_decode_steps"] = setup.options.replay_decode_steps;
  report["page_scoring"] = scoring_name;
  // Bytes one decode step reads once: bf16 weights (the embedding table only gathered)
  // and, per sequence, every KV byte of the context (dense).
  const double weight_bytes =
      2.0 * (config.NumParameters() - int64_t{config.vocab_size} * config.hidden_size *
                                          (config.tie_word_embeddings ? 0 : 1));
  const double kv_bytes_per_token =
      2.0 * 2.0 * config.num_layers * config.num_kv_heads * config.head_dim;
  std::printf("%s geometry, %d layers, %.2fB parameters, backend %s\n", geometry.c_str(),
              config.num_layers, config.NumParameters() / 1e9, setup.options.backend.c_str());
  std::printf("%8s %7s %6s %10s %12s %14s %6s %9s\n", "context", "mode", "batch", "TTFT ms",
              "decode ms", "read-once ms", "busy", "gap us");
  for (const std::string& mode : modes) {
    setup.options.attention =
        mode == "dense" ? SparseAttentionConfig::Dense() : SparseAttentionConfig{};
    if (mode != "dense") {
      setup.options.attention.gate_file = gates;
      setup.options.attention.streaming_ratio = 0.5f;
      setup.options.attention.token_budget = 4096;
      setup.options.attention.reuse_interval = 4;
      setup.options.attention.scoring = scoring;
    }
    absl::StatusOr<std::unique_ptr<Engine>> engine = MakeEngine(setup, 1);
    Check(engine.status(), "creating the engine");
    // One chunk first, untimed: one-time work (GEMM algorithm timing per shape, workspace
    // growth) stays out of the first context's time to first token.
    Prefill(**engine, 0, std::min<int64_t>(chunk, contexts.front()), chunk);
    Check((*engine)->FreeSequence(0), "FreeSequence");
    for (int64_t context : contexts) {
      const double ttft = Prefill(**engine, 0, context, chunk);
      absl::StatusOr<KvSnapshot> snapshot = (*engine)->kv_store().ExportSequence(0);
      Check(snapshot.status(), "exporting the prefilled KV");
      int imported = 1;
      for (int64_t batch : batches) {
        nlohmann::json row = {
            {"mode", mode}, {"context", context}, {"batch", batch}, {"ttft_ms", ttft}};
        absl::Status fits = absl::OkStatus();
        for (; imported < batch && fits.ok(); ++imported)
          fits = (*engine)->SwapIn(imported, *snapshot);
        const double read_once =
            (weight_bytes + batch * kv_bytes_per_token * context) / (bandwidth_gbs * 1e6);
        if (!fits.ok()) {
          std::printf("%8lld %7s %6lld %10.1f %12s %14.2f  (%s)\n", (long long)context,
                      mode.c_str(), (long long)batch, ttft, "no room", read_once,
                      fits.ToString().c_str());
          row["decode_step_ms"] = nullptr;
          row["error"] = fits.ToString();
          --imported;
        } else {
          const DecodeStepTimes decode =
              TimeDecodeSteps(**engine, static_cast<int>(batch), warmup_steps, steps);
          nlohmann::json trace =
              trace_steps > 0 ? TraceDecodeSteps(**engine, static_cast<int>(batch), trace_steps)
                              : nlohmann::json();
          std::printf("%8lld %7s %6lld %10.1f %12.2f %14.2f", (long long)context, mode.c_str(),
                      (long long)batch, ttft, decode.mean_ms, read_once);
          if (trace.is_object()) {
            std::printf(" %5.1f%% %9.1f", 100 * trace["busy_fraction"].get<double>(),
                        trace["mean_step_gap_us"].get<double>());
          }
          std::printf("\n");
          row["decode_step_ms"] = decode.mean_ms;
          row["decode_step_median_ms"] = decode.median_ms;
          row["device_trace"] = trace;
          const ReplayCounters replays = (*engine)->backend().replay_counters();
          row["replay"] = {{"eager", replays.eager},
                           {"captured", replays.captured},
                           {"replayed", replays.replayed},
                           {"capture_failures", replays.capture_failures}};
        }
        row["read_once_ms"] = read_once;
        report["runs"].push_back(row);
      }
      for (int b = 0; b < imported; ++b) Check((*engine)->FreeSequence(b), "FreeSequence");
    }
  }
  return bench::WriteReport(report, FlagValue(argc, argv, "json")) ? 0 : 1;
}

}  // namespace
}  // namespace lserve

int main(int argc, char** argv) { return lserve::Main(argc, argv); }
