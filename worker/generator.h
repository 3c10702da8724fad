// Runs generation requests to completion on one engine with continuous batching: every
// step carries one decode token per running sequence plus prefill chunks of waiting
// prompts, within a per-step token budget.
#ifndef LSERVE_WORKER_GENERATOR_H_
#define LSERVE_WORKER_GENERATOR_H_

#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "worker/engine.h"
#include "worker/sampler.h"

namespace lserve {

struct GenerationRequest {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
};

enum class FinishReason { kNone, kStop, kLength };
const char* FinishReasonName(FinishReason reason);

struct GenerationResult {
  absl::Status status;  // a bad request fails alone; the others still run
  std::vector<int32_t> tokens;
  FinishReason finish_reason = FinishReason::kNone;
  double time_to_first_token_s = 0.0;
  double total_time_s = 0.0;
};

struct GeneratorOptions {
  int64_t max_step_tokens = 2048;  // tokens per engine step, all sequences together
  int64_t prefill_chunk = 0;       // prompt tokens per sequence per step; 0: up to the budget
  int max_running = 8;             // sequences decoding or prefilling at once
};

// Called for each generated token as soon as it is sampled.
using TokenCallback = std::function<void(size_t request_index, int32_t token)>;

std::vector<GenerationResult> Generate(Engine& engine,
                                       const std::vector<GenerationRequest>& requests,
                                       const GeneratorOptions& options,
                                       const TokenCallback& on_token = nullptr);

}  // namespace lserve

#endif  // LSERVE_WORKER_GENERATOR_H_
