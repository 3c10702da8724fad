// Needle-in-a-haystack retrieval through the engine: a byte-level model reads essay text
// with a sentence "The secret key is NNNNNNN." hidden at some depth, then a question, and
// must generate the key. A grid of context length x needle depth is run per attention
// configuration (dense, hybrid with any knobs) and scored by exact match.
//
// Token ids follow scripts/train_niah_model.py: bytes are 0..255, BOS 256, QUERY 257
// (starts the question), EOS 258, KEY 259 (stands before the key). The haystack is text
// with its ASCII digits removed, so the key (7 distinct digits) is the only number. The
// prompt is BOS, the haystack with the needle " The secret key is " KEY digits ". "
// inserted at byte offset round(depth * haystack_bytes), QUERY, the question "What is the
// secret key? The secret key is " and KEY; the answer is the key's digits, then EOS.
#ifndef LSERVE_EVAL_NIAH_H_
#define LSERVE_EVAL_NIAH_H_

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "worker/engine.h"
#include "worker/model/model_weights.h"

namespace lserve {

inline constexpr int32_t kNiahBos = 256;
inline constexpr int32_t kNiahQuery = 257;
inline constexpr int32_t kNiahEos = 258;
inline constexpr int32_t kNiahKey = 259;
inline constexpr int kNiahKeyDigits = 7;

struct NiahSample {
  std::vector<int32_t> prompt;  // exactly `context` tokens
  std::string key;              // kNiahKeyDigits digits
  int64_t needle_position = 0;  // token index where the needle sentence starts
};

// One prompt of `context` tokens with the needle at `depth` in [0, 1]; the haystack
// window and the key come from `seed`. InvalidArgument when the context cannot hold the
// needle and question or exceeds the haystack.
absl::StatusOr<NiahSample> MakeNiahSample(absl::string_view haystack, int64_t context, double depth,
                                          uint64_t seed);

// The haystack text, ASCII digits removed: comma-separated files and folders (a folder's
// *.txt in name order), concatenated in the order given.
absl::StatusOr<std::string> ReadHaystack(absl::string_view paths);

// The evaluation haystack, relative to the repository root: the four essays of
// ../shared/eval/needle_haystack/ that training held out.
inline constexpr char kNiahHeldOutHaystack[] =
    "../shared/eval/needle_haystack/desres.txt,../shared/eval/needle_haystack/iflisp.txt,"
    "../shared/eval/needle_haystack/popular.txt,../shared/eval/needle_haystack/unions.txt";

struct NiahGridSpec {
  std::vector<int64_t> contexts;
  std::vector<double> depths;
  int trials = 1;  // samples per cell, each with its own haystack window and key
  uint64_t seed = 0;
  int64_t prefill_chunk = 2048;
  int max_running = 4;  // sequences batched together
};

struct NiahCell {
  int64_t context = 0;
  double depth = 0.0;
  int trials = 0;
  int correct = 0;
};

struct NiahGridResult {
  std::vector<NiahCell> cells;  // contexts outer, depths inner
  int trials = 0;
  int correct = 0;
  double seconds = 0.0;
  double Accuracy() const { return trials == 0 ? 0.0 : static_cast<double>(correct) / trials; }
  // Accuracy over the cells of one context length.
  double AccuracyAt(int64_t context) const;
};

// Runs the grid on a fresh engine built from `weights` and `options`; the engine's
// maximum sequences follow spec.max_running.
absl::StatusOr<NiahGridResult> RunNiahGrid(const ModelWeights& weights, EngineOptions options,
                                           absl::string_view haystack, const NiahGridSpec& spec);

// The grid as text: a row per context, a column per depth, correct/trials per cell.
std::string FormatNiahGrid(const NiahGridSpec& spec, const NiahGridResult& result);

}  // namespace lserve

#endif  // LSERVE_EVAL_NIAH_H_
