// lserve_generate: runs the engine on one prompt of token ids and prints the generated ids
// as they come (or one JSON object with --json).
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "common/token_ids.h"
#include "nlohmann/json.hpp"
#include "worker/model/synthetic_model.h"
#include "worker/scheduler/offline.h"

ABSL_FLAG(std::string, model, "",
          "Hugging Face model folder (config.json + safetensors); empty: the built-in "
          "synthetic model");
ABSL_FLAG(uint64_t, model_seed, 1, "Seed of the built-in synthetic model's weights");
ABSL_FLAG(std::string, prompt_ids, "1", "Prompt as comma-separated token ids");
ABSL_FLAG(int, max_tokens, 16, "Tokens to generate");
ABSL_FLAG(float, temperature, 0.0f, "Sampling temperature; 0 is greedy");
ABSL_FLAG(int, top_k, 0, "Keep the k most likely tokens; 0 keeps all");
ABSL_FLAG(float, top_p, 1.0f, "Nucleus sampling mass in (0, 1]");
ABSL_FLAG(uint64_t, seed, 0, "Sampling seed");
ABSL_FLAG(std::string, stop_ids, "", "Comma-separated stop token ids");
ABSL_FLAG(int, prefill_chunk, 0, "Prompt tokens per prefill step; 0: whole prompt");
ABSL_FLAG(int, threads, 0, "Worker threads; 0: one per core");
ABSL_FLAG(std::string, backend, "cpu", "Compute backend: cpu or cuda");
ABSL_FLAG(int, device, 0, "cuda: device ordinal");
ABSL_FLAG(double, gpu_memory_utilization, 0.9,
          "cuda: share of the device memory free after weights and activations that the KV "
          "cache may take, in (0, 1]");
ABSL_FLAG(int64_t, kv_cache_bytes, 0,
          "KV cache bytes; 0: 4 GiB on cpu, from free device memory on cuda");
ABSL_FLAG(int, logprobs, -1,
          "Logprobs per token: -1 none, n >= 0 the chosen token's plus the n best");
ABSL_FLAG(bool, eager_decode, false,
          "cuda: launch decode steps op by op instead of replaying them as CUDA graphs");
ABSL_FLAG(bool, dense, false, "Turn every sparsity off: plain causal attention");
ABSL_FLAG(bool, streaming_heads, true, "Streaming heads (static sparsity)");
ABSL_FLAG(float, streaming_ratio, 0.5f, "Share of KV heads that stream");
ABSL_FLAG(std::string, gate_file, "", "DuoAttention full_attention_heads.tsv; empty: seeded");
ABSL_FLAG(int64_t, sink, 128, "Streaming heads' sink tokens");
ABSL_FLAG(int64_t, prefill_local, 8192, "Streaming heads' local window during prefill");
ABSL_FLAG(int64_t, decode_local, 256, "Streaming heads' local window during decode");
ABSL_FLAG(int, page_size, 64, "Physical KV page size in tokens (16, 32, 64, 128)");
ABSL_FLAG(int, logical_page_size, 16, "Logical page size in tokens");
ABSL_FLAG(bool, page_selection, true, "Query-aware decode page selection (dynamic sparsity)");
ABSL_FLAG(int64_t, token_budget, 4096, "Decode token budget of dense heads");
ABSL_FLAG(int, reuse_interval, 4, "Decode steps a page selection is reused for");
ABSL_FLAG(std::string, page_scoring, "query_head", "Page scoring: query_head or kv_head");
ABSL_FLAG(bool, json, false, "Print one JSON object instead of streaming ids");

namespace {

int Fail(const absl::Status& status) {
  std::cerr << "lserve_generate: " << status << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("Generate token ids with the lserve engine.");
  absl::ParseCommandLine(argc, argv);
  using lserve::Engine;
  absl::StatusOr<lserve::ModelWeights> weights =
      absl::GetFlag(FLAGS_model).empty()
          ? lserve::MakeSyntheticWeights(lserve::TinySyntheticConfig(),
                                         absl::GetFlag(FLAGS_model_seed))
          : lserve::LoadModelWeights(absl::GetFlag(FLAGS_model));
  if (!weights.ok()) return Fail(weights.status());
  lserve::EngineOptions engine_options;
  engine_options.num_threads = absl::GetFlag(FLAGS_threads);
  engine_options.backend = absl::GetFlag(FLAGS_backend);
  engine_options.device = absl::GetFlag(FLAGS_device);
  engine_options.gpu_memory_utilization = absl::GetFlag(FLAGS_gpu_memory_utilization);
  engine_options.replay_decode_steps = !absl::GetFlag(FLAGS_eager_decode);
  engine_options.max_kv_cache_bytes = absl::GetFlag(FLAGS_kv_cache_bytes);
  lserve::SparseAttentionConfig& attention = engine_options.attention;
  attention.streaming_heads = absl::GetFlag(FLAGS_streaming_heads);
  attention.streaming_ratio = absl::GetFlag(FLAGS_streaming_ratio);
  attention.gate_file = absl::GetFlag(FLAGS_gate_file);
  attention.sink = absl::GetFlag(FLAGS_sink);
  attention.prefill_local = absl::GetFlag(FLAGS_prefill_local);
  attention.decode_local = absl::GetFlag(FLAGS_decode_local);
  attention.page_size = absl::GetFlag(FLAGS_page_size);
  attention.logical_page_size = absl::GetFlag(FLAGS_logical_page_size);
  attention.page_selection = absl::GetFlag(FLAGS_page_selection);
  attention.token_budget = absl::GetFlag(FLAGS_token_budget);
  attention.reuse_interval = absl::GetFlag(FLAGS_reuse_interval);
  if (absl::Status status =
          lserve::ParsePageScoring(absl::GetFlag(FLAGS_page_scoring), &attention.scoring);
      !status.ok()) {
    return Fail(status);
  }
  if (absl::GetFlag(FLAGS_dense)) {
    attention.streaming_heads = false;
    attention.page_selection = false;
  }
  engine_options.max_sequences = 1;
  absl::StatusOr<std::unique_ptr<Engine>> engine =
      Engine::Create(*std::move(weights), engine_options);
  if (!engine.ok()) return Fail(engine.status());

  lserve::GenerationRequest request;
  absl::StatusOr<std::vector<int32_t>> prompt =
      lserve::ParseTokenIds(absl::GetFlag(FLAGS_prompt_ids), "prompt_ids");
  if (!prompt.ok()) return Fail(prompt.status());
  absl::StatusOr<std::vector<int32_t>> stops =
      lserve::ParseTokenIds(absl::GetFlag(FLAGS_stop_ids), "stop_ids");
  if (!stops.ok()) return Fail(stops.status());
  request.prompt = *prompt;
  request.sampling.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  request.sampling.temperature = absl::GetFlag(FLAGS_temperature);
  request.sampling.top_k = absl::GetFlag(FLAGS_top_k);
  request.sampling.top_p = absl::GetFlag(FLAGS_top_p);
  request.sampling.seed = absl::GetFlag(FLAGS_seed);
  request.sampling.stop_token_ids = *stops;
  request.sampling.logprobs = absl::GetFlag(FLAGS_logprobs);

  lserve::SchedulerOptions options;
  options.prefill_chunk = absl::GetFlag(FLAGS_prefill_chunk);
  const bool json = absl::GetFlag(FLAGS_json);
  auto stream = [&](size_t, int32_t token) {
    if (json) return;
    std::printf("%d ", token);
    std::fflush(stdout);
  };
  const auto results = lserve::Generate(**engine, {request}, options, stream);
  const lserve::GenerationResult& result = results[0];
  if (!result.status.ok()) return Fail(result.status);
  if (json) {
    nlohmann::json out = {
        {"prompt_ids", request.prompt},
        {"generated_ids", result.tokens},
        {"finish_reason", lserve::FinishReasonName(result.finish_reason)},
        {"time_to_first_token_s", result.timings.time_to_first_token_s},
        {"total_time_s", result.timings.total_s},
        {"model",
         absl::GetFlag(FLAGS_model).empty() ? "builtin-synthetic" : absl::GetFlag(FLAGS_model)}};
    if (request.sampling.logprobs >= 0) {
      for (const lserve::GeneratedToken& token : result.details) {
        nlohmann::json top = nlohmann::json::array();
        for (const auto& [id, logprob] : token.top_logprobs) top.push_back({id, logprob});
        out["logprobs"].push_back({{"id", token.id}, {"logprob", token.logprob}, {"top", top}});
      }
    }
    std::cout << out.dump() << "\n";
  } else {
    std::printf("\n");
  }
  return 0;
}
