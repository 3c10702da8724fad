// lserve_niah: needle-in-a-haystack grid (context length x needle depth) through the
// engine, dense against hybrid attention variants. Prints each grid and a summary and
// writes JSON (scripts/plot_niah.py draws the heatmaps from it).
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "bench/bench_report.h"
#include "eval/niah.h"
#include "eval/niah_variants.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, model, "", "Hugging Face model folder of the byte-level NIAH model");
ABSL_FLAG(std::string, haystack, lserve::kNiahHeldOutHaystack,
          "Haystack: comma-separated text files or folders of *.txt");
ABSL_FLAG(std::string, gate_file, "",
          "Learned gates; empty: <model>/full_attention_heads.tsv when present");
ABSL_FLAG(std::string, contexts, "1024,2048,4096,8192,16384", "Prompt lengths in tokens");
ABSL_FLAG(std::string, depths, "0,0.25,0.5,0.75,1", "Needle depths in [0, 1]");
ABSL_FLAG(int, trials, 2, "Samples per cell");
ABSL_FLAG(uint64_t, seed, 0, "Seed of the haystack windows and keys");
ABSL_FLAG(std::string, variants,
          "dense,hybrid,ratio0.25,ratio0.75,budget1024,budget2048,reuse1,reuse8,random1,"
          "random2,random3",
          "Attention variants (see eval/niah_variants.h)");
ABSL_FLAG(std::string, backend, "cpu", "Compute backend: cpu or cuda");
ABSL_FLAG(int, threads, 0, "CPU worker threads; 0: one per core");
ABSL_FLAG(int64_t, prefill_chunk, 2048, "Prompt tokens per prefill step");
ABSL_FLAG(int, max_running, 4, "Sequences batched together");
ABSL_FLAG(std::string, json_out, "", "Write the results as JSON here");

namespace {

int Fail(const absl::Status& status) {
  std::cerr << "lserve_niah: " << status << "\n";
  return 1;
}

template <typename T, typename Parse>
absl::StatusOr<std::vector<T>> ParseList(const std::string& text, const char* flag, Parse parse) {
  std::vector<T> values;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    T value{};
    if (!parse(part, &value)) {
      return absl::InvalidArgumentError(std::string("bad value in --") + flag + ": " +
                                        std::string(part));
    }
    values.push_back(value);
  }
  if (values.empty()) return absl::InvalidArgumentError(std::string("--") + flag + " is empty");
  return values;
}

nlohmann::json AttentionJson(const lserve::SparseAttentionConfig& a) {
  return {{"streaming_heads", a.streaming_heads},
          {"streaming_ratio", a.streaming_ratio},
          {"gate_file", a.gate_file},
          {"head_seed", a.head_seed},
          {"sink", a.sink},
          {"prefill_local", a.prefill_local},
          {"decode_local", a.decode_local},
          {"page_selection", a.page_selection},
          {"token_budget", a.token_budget},
          {"reuse_interval", a.reuse_interval}};
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Needle-in-a-haystack grid through the lserve engine.");
  absl::ParseCommandLine(argc, argv);
  const std::filesystem::path model_dir = absl::GetFlag(FLAGS_model);
  if (model_dir.empty()) return Fail(absl::InvalidArgumentError("--model is required"));
  absl::StatusOr<lserve::ModelWeights> weights = lserve::LoadModelWeights(model_dir);
  if (!weights.ok()) return Fail(weights.status());
  absl::StatusOr<std::string> haystack = lserve::ReadHaystack(absl::GetFlag(FLAGS_haystack));
  if (!haystack.ok()) return Fail(haystack.status());
  std::string gate_file = absl::GetFlag(FLAGS_gate_file);
  if (gate_file.empty() && std::filesystem::exists(model_dir / "full_attention_heads.tsv")) {
    gate_file = (model_dir / "full_attention_heads.tsv").string();
  }

  lserve::NiahGridSpec spec;
  auto contexts =
      ParseList<int64_t>(absl::GetFlag(FLAGS_contexts), "contexts",
                         [](absl::string_view s, int64_t* v) { return absl::SimpleAtoi(s, v); });
  if (!contexts.ok()) return Fail(contexts.status());
  auto depths =
      ParseList<double>(absl::GetFlag(FLAGS_depths), "depths",
                        [](absl::string_view s, double* v) { return absl::SimpleAtod(s, v); });
  if (!depths.ok()) return Fail(depths.status());
  spec.contexts = *contexts;
  spec.depths = *depths;
  spec.trials = absl::GetFlag(FLAGS_trials);
  spec.seed = absl::GetFlag(FLAGS_seed);
  spec.prefill_chunk = absl::GetFlag(FLAGS_prefill_chunk);
  spec.max_running = absl::GetFlag(FLAGS_max_running);

  nlohmann::json out = {{"provenance", lserve::bench::Provenance(argc, argv)},
                        {"model", model_dir.string()},
                        {"haystack", absl::GetFlag(FLAGS_haystack)},
                        {"backend", absl::GetFlag(FLAGS_backend)},
                        {"contexts", spec.contexts},
                        {"depths", spec.depths},
                        {"trials", spec.trials},
                        {"seed", spec.seed},
                        {"prefill_chunk", spec.prefill_chunk},
                        {"variants", nlohmann::json::array()}};
  std::string summary;
  double dense_accuracy = -1.0;
  for (absl::string_view name :
       absl::StrSplit(absl::GetFlag(FLAGS_variants), ',', absl::SkipEmpty())) {
    absl::StatusOr<lserve::SparseAttentionConfig> attention = lserve::NiahVariant(name, gate_file);
    if (!attention.ok()) return Fail(attention.status());
    lserve::EngineOptions options;
    options.backend = absl::GetFlag(FLAGS_backend);
    options.num_threads = absl::GetFlag(FLAGS_threads);
    options.attention = *attention;
    absl::StatusOr<lserve::NiahGridResult> result =
        lserve::RunNiahGrid(*weights, options, *haystack, spec);
    if (!result.ok()) return Fail(result.status());
    if (name == "dense") dense_accuracy = result->Accuracy();
    std::printf("== %s: %.1f%% (%d/%d) in %.1fs\n%s\n", std::string(name).c_str(),
                100.0 * result->Accuracy(), result->correct, result->trials, result->seconds,
                lserve::FormatNiahGrid(spec, *result).c_str());
    std::fflush(stdout);
    const std::string gap =
        dense_accuracy < 0
            ? ""
            : absl::StrFormat("%+.1f", 100.0 * (result->Accuracy() - dense_accuracy));
    summary += absl::StrFormat("%-24s %7.1f%% %8s ", name, 100.0 * result->Accuracy(), gap);
    nlohmann::json by_context = nlohmann::json::object();
    for (int64_t context : spec.contexts) {
      const double accuracy = result->AccuracyAt(context);
      absl::StrAppendFormat(&summary, " %5.1f", 100.0 * accuracy);
      by_context[std::to_string(context)] = accuracy;
    }
    summary += "\n";
    nlohmann::json cells = nlohmann::json::array();
    for (const lserve::NiahCell& cell : result->cells) {
      cells.push_back({{"context", cell.context},
                       {"depth", cell.depth},
                       {"trials", cell.trials},
                       {"correct", cell.correct}});
    }
    out["variants"].push_back({{"name", name},
                               {"attention", AttentionJson(*attention)},
                               {"accuracy", result->Accuracy()},
                               {"accuracy_by_context", by_context},
                               {"seconds", result->seconds},
                               {"cells", cells}});
  }
  std::printf("%-24s %8s %8s  by context (%%):", "variant", "accuracy", "vs dense");
  for (int64_t context : spec.contexts) std::printf(" %lld", static_cast<long long>(context));
  std::printf("\n%s", summary.c_str());
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!lserve::bench::WriteReport(out, json_out)) {
    return Fail(absl::InternalError("cannot write " + json_out));
  }
  return 0;
}
