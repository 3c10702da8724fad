#include "worker/generator.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace lserve {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Running {
  size_t index = 0;
  SeqId seq = 0;
  size_t prefilled = 0;  // prompt tokens already in the KV cache
  std::optional<Sampler> sampler;
  int64_t dense_pages = 0;  // pages promised to this sequence at admission
  int64_t streaming_pages = 0;
};

absl::Status ValidateRequest(const GenerationRequest& request, const ModelConfig& config) {
  if (request.prompt.empty()) return absl::InvalidArgumentError("the prompt is empty");
  for (int32_t token : request.prompt) {
    if (token < 0 || token >= config.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt token id ", token, " is outside the vocabulary [0, ", config.vocab_size, ")"));
    }
  }
  if (absl::Status status = ValidateSamplingParams(request.sampling, config.vocab_size);
      !status.ok()) {
    return status;
  }
  const int64_t needed = static_cast<int64_t>(request.prompt.size()) + request.sampling.max_tokens;
  if (needed > config.max_position_embeddings) {
    return absl::OutOfRangeError(absl::StrCat(
        "prompt (", request.prompt.size(), " tokens) + max_tokens (", request.sampling.max_tokens,
        ") exceeds the context length ", config.max_position_embeddings));
  }
  return absl::OkStatus();
}

}  // namespace

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kNone:
      break;
  }
  return "none";
}

std::vector<GenerationResult> Generate(Engine& engine,
                                       const std::vector<GenerationRequest>& requests,
                                       const GeneratorOptions& options,
                                       const TokenCallback& on_token) {
  const Clock::time_point start = Clock::now();
  std::vector<GenerationResult> results(requests.size());
  if (options.max_running <= 0 || options.max_step_tokens <= 0 || options.prefill_chunk < 0) {
    for (GenerationResult& result : results) {
      result.status = absl::InvalidArgumentError(
          absl::StrCat("generator options: max_running (", options.max_running,
                       ") and max_step_tokens (", options.max_step_tokens,
                       ") must be positive, prefill_chunk (", options.prefill_chunk, ") >= 0"));
    }
    return results;
  }
  // A prefill chunk never exceeds what the KV cache's streaming ring is sized for.
  const int64_t chunk_limit = engine.kv_cache().config().max_chunk_tokens;
  std::deque<size_t> waiting;
  for (size_t i = 0; i < requests.size(); ++i) {
    results[i].status = ValidateRequest(requests[i], engine.config());
    if (results[i].status.ok()) waiting.push_back(i);
  }
  const PagedKvCache& kv = engine.kv_cache();
  const int64_t dense_total = kv.dense_allocator().num_pages();
  const int64_t streaming_total = kv.streaming_allocator().num_pages();
  int64_t dense_promised = 0, streaming_promised = 0;
  std::vector<Running> running;
  SeqId next_seq = 1;
  auto finish = [&](Running& r, absl::Status status, FinishReason reason) {
    results[r.index].status = std::move(status);
    results[r.index].finish_reason = reason;
    results[r.index].total_time_s = SecondsSince(start);
    CHECK(engine.FreeSequence(r.seq).ok());
    dense_promised -= r.dense_pages;
    streaming_promised -= r.streaming_pages;
  };
  while (!waiting.empty() || !running.empty()) {
    // Admit while a full generation of the next request fits in the pages not yet promised.
    while (!waiting.empty() && static_cast<int>(running.size()) < options.max_running) {
      const GenerationRequest& request = requests[waiting.front()];
      const int64_t tokens =
          static_cast<int64_t>(request.prompt.size()) + request.sampling.max_tokens;
      const int64_t dense = kv.DensePagesFor(tokens);
      const int64_t streaming = kv.StreamingPagesFor(tokens);
      if (dense > dense_total || streaming > streaming_total) {
        results[waiting.front()].status = absl::ResourceExhaustedError(absl::StrCat(
            "request needs ", dense, " dense and ", streaming,
            " streaming KV pages, the cache has ", dense_total, " and ", streaming_total));
        waiting.pop_front();
        continue;
      }
      if (dense_promised + dense > dense_total ||
          streaming_promised + streaming > streaming_total) {
        break;
      }
      Running r;
      r.index = waiting.front();
      while (engine.kv_cache().HasSequence(next_seq)) ++next_seq;
      r.seq = next_seq++;
      r.sampler.emplace(request.sampling);
      r.dense_pages = dense;
      r.streaming_pages = streaming;
      CHECK(engine.AddSequence(r.seq).ok());
      dense_promised += dense;
      streaming_promised += streaming;
      running.push_back(std::move(r));
      waiting.pop_front();
    }
    // Decode tokens first (they keep inter-token latency low), then prefill chunks.
    std::vector<StepInput> batch;
    std::vector<size_t> batch_owner;
    int64_t budget = options.max_step_tokens;
    for (size_t i = 0; i < running.size(); ++i) {
      const Running& r = running[i];
      if (r.prefilled < requests[r.index].prompt.size()) continue;
      batch.push_back({r.seq, {results[r.index].tokens.back()}, StepPhase::kDecode, false});
      batch_owner.push_back(i);
      --budget;
    }
    for (size_t i = 0; i < running.size() && budget > 0; ++i) {
      const Running& r = running[i];
      const std::vector<int32_t>& prompt = requests[r.index].prompt;
      if (r.prefilled >= prompt.size()) continue;
      int64_t chunk = std::min<int64_t>(budget, prompt.size() - r.prefilled);
      if (options.prefill_chunk > 0) chunk = std::min(chunk, options.prefill_chunk);
      chunk = std::min(chunk, chunk_limit);
      batch.push_back(
          {r.seq,
           std::vector<int32_t>(prompt.begin() + r.prefilled, prompt.begin() + r.prefilled + chunk),
           StepPhase::kPrefill, false});
      batch_owner.push_back(i);
      budget -= chunk;
    }
    absl::StatusOr<std::vector<StepOutput>> outputs = engine.Step(batch);
    if (!outputs.ok()) {
      // A failed step advances nothing: fail the sequences in it rather than spin.
      for (size_t owner : batch_owner) {
        finish(running[owner], outputs.status(), FinishReason::kNone);
      }
    } else {
      for (size_t j = 0; j < batch.size(); ++j) {
        Running& r = running[batch_owner[j]];
        GenerationResult& result = results[r.index];
        const GenerationRequest& request = requests[r.index];
        if (batch[j].phase == StepPhase::kPrefill) {
          r.prefilled += batch[j].tokens.size();
          if (r.prefilled < request.prompt.size()) continue;
          result.time_to_first_token_s = SecondsSince(start);
        }
        const int32_t token = r.sampler->Sample((*outputs)[j].logits);
        result.tokens.push_back(token);
        if (on_token) on_token(r.index, token);
        const auto& stops = request.sampling.stop_token_ids;
        if (std::find(stops.begin(), stops.end(), token) != stops.end()) {
          finish(r, absl::OkStatus(), FinishReason::kStop);
        } else if (static_cast<int>(result.tokens.size()) >= request.sampling.max_tokens) {
          finish(r, absl::OkStatus(), FinishReason::kLength);
        }
      }
    }
    std::erase_if(running, [&](const Running& r) {
      return results[r.index].finish_reason != FinishReason::kNone || !results[r.index].status.ok();
    });
  }
  return results;
}

}  // namespace lserve
