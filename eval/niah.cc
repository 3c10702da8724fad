#include "eval/niah.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <fstream>
#include <random>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "worker/scheduler/offline.h"

namespace lserve {
namespace {

constexpr absl::string_view kNeedleHead = " The secret key is ";  // then KEY and the digits
constexpr absl::string_view kNeedleTail = ". ";
constexpr absl::string_view kQuestion = "What is the secret key? The secret key is ";  // then KEY

void AppendBytes(absl::string_view text, std::vector<int32_t>* tokens) {
  for (char c : text) tokens->push_back(static_cast<unsigned char>(c));
}

uint64_t SplitMix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t SampleSeed(uint64_t seed, int64_t context, size_t depth_index, int trial) {
  return SplitMix(SplitMix(SplitMix(seed) ^ static_cast<uint64_t>(context)) ^ (depth_index << 20) ^
                  static_cast<uint64_t>(trial));
}

}  // namespace

absl::StatusOr<NiahSample> MakeNiahSample(absl::string_view haystack, int64_t context, double depth,
                                          uint64_t seed) {
  if (!(depth >= 0.0 && depth <= 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("needle depth ", depth, " is not in [0, 1]"));
  }
  std::mt19937_64 rng(seed);
  NiahSample sample;
  std::string digits = "0123456789";
  for (int i = 0; i < kNiahKeyDigits; ++i) {  // distinct digits: a partial Fisher-Yates draw
    std::swap(digits[static_cast<size_t>(i)], digits[i + rng() % (10 - i)]);
  }
  sample.key = digits.substr(0, kNiahKeyDigits);
  std::vector<int32_t> needle;
  AppendBytes(kNeedleHead, &needle);
  needle.push_back(kNiahKey);
  AppendBytes(sample.key, &needle);
  AppendBytes(kNeedleTail, &needle);
  const int64_t fixed =
      1 + static_cast<int64_t>(needle.size()) + 1 + static_cast<int64_t>(kQuestion.size()) + 1;
  const int64_t hay_len = context - fixed;
  if (hay_len <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "context ", context, " cannot hold the needle and question (", fixed, " tokens)"));
  }
  if (hay_len > static_cast<int64_t>(haystack.size())) {
    return absl::InvalidArgumentError(absl::StrCat("context ", context, " needs ", hay_len,
                                                   " haystack bytes; the text has ",
                                                   haystack.size()));
  }
  const uint64_t offsets = haystack.size() - static_cast<uint64_t>(hay_len) + 1;
  const absl::string_view hay = haystack.substr(rng() % offsets, static_cast<size_t>(hay_len));
  const size_t at = static_cast<size_t>(std::llround(depth * static_cast<double>(hay_len)));
  sample.prompt.reserve(static_cast<size_t>(context));
  sample.prompt.push_back(kNiahBos);
  AppendBytes(hay.substr(0, at), &sample.prompt);
  sample.needle_position = static_cast<int64_t>(sample.prompt.size());
  sample.prompt.insert(sample.prompt.end(), needle.begin(), needle.end());
  AppendBytes(hay.substr(at), &sample.prompt);
  sample.prompt.push_back(kNiahQuery);
  AppendBytes(kQuestion, &sample.prompt);
  sample.prompt.push_back(kNiahKey);
  return sample;
}

absl::StatusOr<std::string> ReadHaystack(absl::string_view paths) {
  std::vector<std::filesystem::path> files;
  std::error_code error;
  for (absl::string_view part : absl::StrSplit(paths, ',', absl::SkipEmpty())) {
    const std::filesystem::path path(std::string{part});
    if (!std::filesystem::is_directory(path, error)) {
      files.push_back(path);
      continue;
    }
    std::vector<std::filesystem::path> texts;
    for (const auto& entry : std::filesystem::directory_iterator(path, error)) {
      if (entry.path().extension() == ".txt") texts.push_back(entry.path());
    }
    std::sort(texts.begin(), texts.end());
    files.insert(files.end(), texts.begin(), texts.end());
  }
  std::string text;
  for (const auto& file : files) {
    std::ifstream in(file, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read haystack ", file.string()));
    std::stringstream buffer;
    buffer << in.rdbuf();
    for (char c : buffer.str()) {
      if (c < '0' || c > '9') text.push_back(c);
    }
  }
  if (text.empty()) return absl::NotFoundError(absl::StrCat("no haystack text in ", paths));
  return text;
}

double NiahGridResult::AccuracyAt(int64_t context) const {
  int trials_at = 0, correct_at = 0;
  for (const NiahCell& cell : cells) {
    if (cell.context != context) continue;
    trials_at += cell.trials;
    correct_at += cell.correct;
  }
  return trials_at == 0 ? 0.0 : static_cast<double>(correct_at) / trials_at;
}

absl::StatusOr<NiahGridResult> RunNiahGrid(const ModelWeights& weights, EngineOptions options,
                                           absl::string_view haystack, const NiahGridSpec& spec) {
  if (spec.trials <= 0 || spec.max_running <= 0) {
    return absl::InvalidArgumentError("trials and max_running must be positive");
  }
  options.max_sequences = spec.max_running;
  options.max_chunk_tokens = std::max<int64_t>(options.max_chunk_tokens, spec.prefill_chunk);
  ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(weights, options));
  SchedulerOptions scheduler;
  scheduler.prefill_chunk = spec.prefill_chunk;
  scheduler.max_step_tokens = spec.prefill_chunk;
  scheduler.max_running = spec.max_running;

  NiahGridResult result;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t context : spec.contexts) {
    std::vector<GenerationRequest> requests;
    std::vector<std::string> keys;
    for (size_t d = 0; d < spec.depths.size(); ++d) {
      for (int trial = 0; trial < spec.trials; ++trial) {
        ASSIGN_OR_RETURN(NiahSample sample,
                         MakeNiahSample(haystack, context, spec.depths[d],
                                        SampleSeed(spec.seed, context, d, trial)));
        GenerationRequest request;
        request.prompt = std::move(sample.prompt);
        request.sampling.max_tokens = kNiahKeyDigits + 1;
        request.sampling.stop_token_ids = {kNiahEos};
        requests.push_back(std::move(request));
        keys.push_back(std::move(sample.key));
      }
    }
    const std::vector<GenerationResult> outputs = Generate(*engine, requests, scheduler);
    for (size_t d = 0; d < spec.depths.size(); ++d) {
      NiahCell cell{context, spec.depths[d], spec.trials, 0};
      for (int trial = 0; trial < spec.trials; ++trial) {
        const size_t i = d * static_cast<size_t>(spec.trials) + static_cast<size_t>(trial);
        if (!outputs[i].status.ok()) return outputs[i].status;
        const std::vector<int32_t>& tokens = outputs[i].tokens;
        bool hit = tokens.size() >= static_cast<size_t>(kNiahKeyDigits);
        for (int k = 0; hit && k < kNiahKeyDigits; ++k) {
          hit = tokens[static_cast<size_t>(k)] == static_cast<unsigned char>(keys[i][k]);
        }
        cell.correct += hit ? 1 : 0;
      }
      result.trials += cell.trials;
      result.correct += cell.correct;
      result.cells.push_back(cell);
    }
  }
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return result;
}

std::string FormatNiahGrid(const NiahGridSpec& spec, const NiahGridResult& result) {
  std::string out = absl::StrFormat("%9s", "context");
  for (double depth : spec.depths) absl::StrAppendFormat(&out, " %7.0f%%", 100.0 * depth);
  absl::StrAppend(&out, "     all\n");
  for (int64_t context : spec.contexts) {
    absl::StrAppendFormat(&out, "%9d", context);
    for (const NiahCell& cell : result.cells) {
      if (cell.context != context) continue;
      absl::StrAppendFormat(&out, " %8s", absl::StrCat(cell.correct, "/", cell.trials));
    }
    absl::StrAppendFormat(&out, " %6.1f%%\n", 100.0 * result.AccuracyAt(context));
  }
  return out;
}

}  // namespace lserve
