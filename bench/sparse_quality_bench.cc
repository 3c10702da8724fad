// Quality side of hybrid sparse attention on the CPU backend:
//  * needle retrieval: synthetic 16K-128K key histories with planted needles aligned to
//    the query; how often page selection keeps every needle's page at the default budget
//    (4096 tokens), and the attention output error against dense;
//  * stories260K: per-step logit divergence from dense and greedy agreement, with the
//    small windows that make sparsity bite at its 512-token context.
//
// Usage: sparse_quality_bench [--contexts=16384,...] [--needle_logits=8,16,...]
//        [--trials=100] [--needles_only=true] [--json=PATH]
//        [--model=../shared/models/stories260K]
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_report.h"
#include "eval/needle_retrieval.h"
#include "eval/sparse_quality.h"

namespace lserve {
namespace {

nlohmann::json NeedleRuns(const std::vector<int64_t>& contexts, const std::vector<float>& logits,
                          int trials, ThreadPool* pool) {
  nlohmann::json runs = nlohmann::json::array();
  std::printf("%8s %8s %8s %12s %14s %14s\n", "context", "needle", "trials", "all kept",
              "mean rel err", "max rel err");
  for (int64_t context : contexts) {
    for (float logit : logits) {
      NeedleTrialConfig config;
      config.context = context;
      config.needle_logit = logit;
      int all_kept = 0;
      double sum_error = 0.0, max_error = 0.0;
      for (int t = 0; t < trials; ++t) {
        const NeedleTrialResult r = RunNeedleTrial(config, 1000 + t, pool);
        all_kept += r.needles_kept == r.num_needles;
        sum_error += r.output_relative_error;
        max_error = std::max(max_error, r.output_relative_error);
      }
      std::printf("%8ld %8.1f %8d %11.1f%% %14.3g %14.3g\n", static_cast<long>(context), logit,
                  trials, 100.0 * all_kept / trials, sum_error / trials, max_error);
      runs.push_back({{"context", context},
                      {"needle_logit", logit},
                      {"needles_per_trial", config.num_needles},
                      {"token_budget", config.token_budget},
                      {"trials", trials},
                      {"all_needles_kept_share", double(all_kept) / trials},
                      {"mean_output_relative_error", sum_error / trials},
                      {"max_output_relative_error", max_error}});
    }
  }
  return runs;
}

nlohmann::json StoriesRuns(const std::string& model_dir) {
  std::ifstream in(model_dir + "/reference.json");
  std::stringstream text;
  text << in.rdbuf();
  const auto prompt =
      nlohmann::json::parse(text.str())["cases"][2]["prompt_ids"].get<std::vector<int32_t>>();
  nlohmann::json runs = nlohmann::json::array();
  std::printf("\n%-10s %6s %6s %14s %14s %10s %9s\n", "scoring", "budget", "local", "mean max|dl|",
              "worst max|dl|", "agreement", "tiles");
  for (int64_t window : {64, 128, 256}) {
    for (PageScoring scoring : {PageScoring::kPerQueryHead, PageScoring::kPerKvHead}) {
      SparseAttentionConfig config;
      config.page_size = 16;
      config.logical_page_size = 8;
      config.sink = 16;
      config.token_budget = window;
      config.prefill_local = config.decode_local = window;
      config.scoring = scoring;
      auto report = CompareSparseToDense([&] { return LoadModelWeights(model_dir); }, config,
                                         prompt, 400, 16);
      if (!report.ok()) {
        std::fprintf(stderr, "%s\n", report.status().ToString().c_str());
        continue;
      }
      const double tiles = double(report->tiles_visited) / report->tiles_dense;
      std::printf("%-10s %6ld %6ld %14.4f %14.4f %10.3f %8.1f%%\n", PageScoringName(scoring),
                  static_cast<long>(window), static_cast<long>(window),
                  report->mean_max_abs_logit_diff, report->worst_max_abs_logit_diff,
                  report->greedy_agreement, 100.0 * tiles);
      runs.push_back({{"scoring", PageScoringName(scoring)},
                      {"page_size", 16},
                      {"sink", 16},
                      {"token_budget", window},
                      {"local_window", window},
                      {"streaming_ratio", 0.5},
                      {"decode_steps", report->steps},
                      {"mean_max_abs_logit_diff", report->mean_max_abs_logit_diff},
                      {"worst_max_abs_logit_diff", report->worst_max_abs_logit_diff},
                      {"greedy_agreement", report->greedy_agreement},
                      {"tiles_visited_share", tiles}});
    }
  }
  return runs;
}

int Main(int argc, char** argv) {
  std::vector<int64_t> contexts;
  for (absl::string_view part :
       absl::StrSplit(bench::FlagValue(argc, argv, "contexts", "16384,32768,65536,131072"), ',')) {
    int64_t value;
    if (!absl::SimpleAtoi(part, &value)) return 2;
    contexts.push_back(value);
  }
  std::vector<float> logits;
  for (absl::string_view part :
       absl::StrSplit(bench::FlagValue(argc, argv, "needle_logits", "8,10,12,14,16,24"), ',')) {
    float value;
    if (!absl::SimpleAtof(part, &value)) return 2;
    logits.push_back(value);
  }
  const int trials = std::stoi(bench::FlagValue(argc, argv, "trials", "100"));
  ThreadPool pool(0);
  nlohmann::json report = {{"provenance", bench::Provenance(argc, argv)}};
  report["needle_retrieval"] = NeedleRuns(contexts, logits, trials, &pool);
  if (bench::FlagValue(argc, argv, "needles_only") == "true") {
    return bench::WriteReport(report, bench::FlagValue(argc, argv, "json")) ? 0 : 1;
  }
  report["stories260k_vs_dense"] =
      StoriesRuns(bench::FlagValue(argc, argv, "model", LSERVE_SHARED_DIR "/models/stories260K"));
  return bench::WriteReport(report, bench::FlagValue(argc, argv, "json")) ? 0 : 1;
}

}  // namespace
}  // namespace lserve

int main(int argc, char** argv) { return lserve::Main(argc, argv); }
