// A model's float32 weights, loaded from a Hugging Face checkpoint folder.
#ifndef LSERVE_WORKER_MODEL_MODEL_WEIGHTS_H_
#define LSERVE_WORKER_MODEL_MODEL_WEIGHTS_H_

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/model_config.h"

namespace lserve {

// A row-major float32 matrix or vector. It either views a memory-mapped F32 tensor in place
// (zero copy, when the data is 4-byte aligned) or points into converted data; `owner` keeps
// whichever backs `data` alive, so a copy of the tensor stays valid on its own.
struct WeightTensor {
  std::vector<int64_t> shape;
  const float* data = nullptr;
  std::shared_ptr<const void> owner;

  int64_t NumElements() const;
  bool empty() const { return data == nullptr; }
};

// Shapes follow transformers' nn.Linear layout [out_features, in_features]. Bias tensors are
// empty when the model has none.
struct LayerWeights {
  WeightTensor input_norm;           // [hidden]
  WeightTensor q_proj;               // [heads * head_dim, hidden]
  WeightTensor k_proj;               // [kv_heads * head_dim, hidden]
  WeightTensor v_proj;               // [kv_heads * head_dim, hidden]
  WeightTensor o_proj;               // [hidden, heads * head_dim]
  WeightTensor q_bias;               // [heads * head_dim]
  WeightTensor k_bias;               // [kv_heads * head_dim]
  WeightTensor v_bias;               // [kv_heads * head_dim]
  WeightTensor o_bias;               // [hidden]
  WeightTensor post_attention_norm;  // [hidden]
  WeightTensor gate_proj;            // [intermediate, hidden]
  WeightTensor up_proj;              // [intermediate, hidden]
  WeightTensor down_proj;            // [hidden, intermediate]
};

struct ModelWeights {
  ModelConfig config;
  WeightTensor embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  WeightTensor final_norm;              // [hidden]
  WeightTensor lm_head;                 // [vocab, hidden]; the same view as embed_tokens when tied
  std::shared_ptr<const void> storage;  // everything the tensors point into
};

// One tensor of the model under its Hugging Face checkpoint name.
struct NamedWeight {
  std::string name;
  std::vector<int64_t> shape;
  WeightTensor* tensor = nullptr;  // where the tensor belongs inside a ModelWeights
};

// Every tensor `config` calls for, embeddings first and lm_head last (only when untied).
// Sizes weights.layers to config.num_layers; the pointers refer into `weights`.
std::vector<NamedWeight> ListModelTensors(const ModelConfig& config, ModelWeights& weights);

// Loads config.json and the safetensors weights of `folder`, checking every tensor's shape
// against the config. F16/BF16 tensors are widened to float32.
absl::StatusOr<ModelWeights> LoadModelWeights(const std::filesystem::path& folder);

}  // namespace lserve

#endif  // LSERVE_WORKER_MODEL_MODEL_WEIGHTS_H_
