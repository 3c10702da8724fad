// A model's weights in backend memory: what the engine's kernels read.
#ifndef LSERVE_WORKER_ENGINE_WEIGHTS_H_
#define LSERVE_WORKER_ENGINE_WEIGHTS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "worker/model/model_weights.h"

namespace lserve {

// On a backend with its own memory, q/k/v and gate/up are joined into one matrix each
// (qkv_proj [q_dim + 2 kv_dim, hidden], gate_up_proj [2 intermediate, hidden]) so a step
// streams each layer's weights in three GEMMs, not six, and the separate tensors stay
// empty. A host backend reads the checkpoint's tensors where they lie, so they stay apart.
struct EngineLayerWeights {
  BackendTensor input_norm, q_proj, k_proj, v_proj, o_proj;
  BackendTensor q_bias, k_bias, v_bias, o_bias;
  BackendTensor post_attention_norm, gate_proj, up_proj, down_proj;
  BackendTensor qkv_proj, qkv_bias, gate_up_proj;  // joined (or empty)

  bool joined() const { return qkv_proj.data != nullptr; }
};

struct EngineWeights {
  BackendTensor embed_tokens;
  std::vector<EngineLayerWeights> layers;
  BackendTensor final_norm;
  BackendTensor lm_head;  // aliases embed_tokens when the embeddings are tied
  Buffer inv_freq;        // RoPE inverse frequencies, float32
};

// Uploads every tensor (the CPU backend aliases the host weights) and the RoPE table.
absl::StatusOr<EngineWeights> UploadEngineWeights(const ModelWeights& weights, Backend* backend);

}  // namespace lserve

#endif  // LSERVE_WORKER_ENGINE_WEIGHTS_H_
