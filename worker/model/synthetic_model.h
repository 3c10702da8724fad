// Deterministic random-weight models for demos, tests and speed measurements.
#ifndef LSERVE_WORKER_MODEL_SYNTHETIC_MODEL_H_
#define LSERVE_WORKER_MODEL_SYNTHETIC_MODEL_H_

#include <cstdint>
#include <filesystem>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/model/model_config.h"
#include "worker/model/model_weights.h"
#include "worker/model/safetensors.h"

namespace lserve {

// The built-in demo model: Llama, hidden 128, 4 layers, 4 heads (2 KV), intermediate 384,
// vocab 512, 4096 positions, untied embeddings.
ModelConfig TinySyntheticConfig();
// About 125M parameters: hidden 768, 12 layers, 12 heads (4 KV), intermediate 2048,
// vocab 32000, 8192 positions, untied.
ModelConfig Synthetic100MConfig();
// Llama-3.1-8B geometry, including its llama3 rope scaling and 131072 positions.
ModelConfig Llama3_8BConfig();

// Random weights for `config`. The same seed gives bitwise the same weights on any machine
// and thread count; each tensor depends only on the seed, its name and its shape. Linear
// weights are uniform with variance 1/fan_in, norms are 1 plus small noise, so activations
// stay O(1) and logits are well separated.
absl::StatusOr<ModelWeights> MakeSyntheticWeights(const ModelConfig& config, uint64_t seed);

// Writes config.json (torch_dtype set from `dtype`) and model.safetensors into `folder`
// (created if needed), loadable by LoadModelWeights and by transformers.
absl::Status WriteSyntheticModel(const ModelConfig& config, uint64_t seed, DType dtype,
                                 const std::filesystem::path& folder);

}  // namespace lserve

#endif  // LSERVE_WORKER_MODEL_SYNTHETIC_MODEL_H_
