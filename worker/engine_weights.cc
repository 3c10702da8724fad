#include "worker/engine_weights.h"

#include <algorithm>
#include <initializer_list>
#include <vector>

#include "common/status_macros.h"
#include "kernels/rope_frequencies.h"

namespace lserve {
namespace {

RopeSpec RopeSpecFor(const ModelConfig& config) {
  RopeSpec spec;
  spec.head_dim = config.head_dim;
  spec.theta = config.rope_theta;
  spec.factor = config.rope_scaling.factor;
  spec.low_freq_factor = config.rope_scaling.low_freq_factor;
  spec.high_freq_factor = config.rope_scaling.high_freq_factor;
  spec.original_max_position_embeddings = config.rope_scaling.original_max_position_embeddings;
  switch (config.rope_scaling.type) {
    case RopeScalingType::kNone:
      spec.kind = RopeKind::kDefault;
      break;
    case RopeScalingType::kLinear:
      spec.kind = RopeKind::kLinear;
      break;
    case RopeScalingType::kLlama3:
      spec.kind = RopeKind::kLlama3;
      break;
  }
  return spec;
}

absl::StatusOr<BackendTensor> Upload(const WeightTensor& tensor, Backend* backend) {
  if (tensor.empty()) return BackendTensor{};
  return backend->UploadWeights(tensor.data, tensor.NumElements());
}

// The tensors one after another (a Linear's [out, in] rows, or biases) as one tensor in
// backend memory; a missing part (a bias the model lacks) counts as zeros of `sizes[i]`
// elements. Empty when every part is missing. Each part is uploaded on its own and copied
// into its slice, so loading never holds more than one part's staging beside the result.
absl::StatusOr<BackendTensor> UploadJoined(std::initializer_list<const WeightTensor*> parts,
                                           std::initializer_list<int64_t> sizes, Backend* backend) {
  bool any = false;
  int64_t total = 0;
  for (const WeightTensor* part : parts) any = any || !part->empty();
  for (int64_t size : sizes) total += size;
  if (!any) return BackendTensor{};
  MemorySpace* memory = backend->memory();
  BackendTensor joined;
  int64_t offset = 0;  // elements
  auto size = sizes.begin();
  for (const WeightTensor* part : parts) {
    const int64_t elements = *size++;
    if (!part->empty() && part->NumElements() != elements) {
      return absl::InvalidArgumentError("joined weights: a part has the wrong size");
    }
    const std::vector<float> zeros(part->empty() ? elements : 0, 0.0f);
    ASSIGN_OR_RETURN(BackendTensor piece,
                     backend->UploadWeights(part->empty() ? zeros.data() : part->data, elements));
    const size_t element_bytes = DTypeSize(piece.dtype);
    if (joined.data == nullptr) {
      joined.dtype = piece.dtype;
      ASSIGN_OR_RETURN(joined.storage, Buffer::Allocate(memory, total * element_bytes));
      joined.data = joined.storage.data();
    } else if (piece.dtype != joined.dtype) {
      return absl::InternalError("joined weights: parts uploaded in different dtypes");
    }
    RETURN_IF_ERROR(memory->Copy(static_cast<char*>(joined.storage.data()) + offset * element_bytes,
                                 piece.data, elements * element_bytes));
    offset += elements;
  }
  return joined;
}

absl::Status UploadLayerLinears(const ModelConfig& c, const LayerWeights& w, Backend* backend,
                                EngineLayerWeights* layer) {
  if (backend->memory()->host_accessible()) {
    ASSIGN_OR_RETURN(layer->q_proj, Upload(w.q_proj, backend));
    ASSIGN_OR_RETURN(layer->k_proj, Upload(w.k_proj, backend));
    ASSIGN_OR_RETURN(layer->v_proj, Upload(w.v_proj, backend));
    ASSIGN_OR_RETURN(layer->q_bias, Upload(w.q_bias, backend));
    ASSIGN_OR_RETURN(layer->k_bias, Upload(w.k_bias, backend));
    ASSIGN_OR_RETURN(layer->v_bias, Upload(w.v_bias, backend));
    ASSIGN_OR_RETURN(layer->gate_proj, Upload(w.gate_proj, backend));
    ASSIGN_OR_RETURN(layer->up_proj, Upload(w.up_proj, backend));
    return absl::OkStatus();
  }
  const int64_t q_dim = int64_t{c.num_heads} * c.head_dim;
  const int64_t kv_dim = int64_t{c.num_kv_heads} * c.head_dim;
  const int64_t hidden = c.hidden_size, inter = c.intermediate_size;
  ASSIGN_OR_RETURN(layer->qkv_proj,
                   UploadJoined({&w.q_proj, &w.k_proj, &w.v_proj},
                                {q_dim * hidden, kv_dim * hidden, kv_dim * hidden}, backend));
  ASSIGN_OR_RETURN(layer->qkv_bias, UploadJoined({&w.q_bias, &w.k_bias, &w.v_bias},
                                                 {q_dim, kv_dim, kv_dim}, backend));
  ASSIGN_OR_RETURN(layer->gate_up_proj, UploadJoined({&w.gate_proj, &w.up_proj},
                                                     {inter * hidden, inter * hidden}, backend));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<EngineWeights> UploadEngineWeights(const ModelWeights& weights, Backend* backend) {
  EngineWeights out;
  ASSIGN_OR_RETURN(out.embed_tokens, Upload(weights.embed_tokens, backend));
  for (const LayerWeights& w : weights.layers) {
    EngineLayerWeights layer;
    ASSIGN_OR_RETURN(layer.input_norm, Upload(w.input_norm, backend));
    RETURN_IF_ERROR(UploadLayerLinears(weights.config, w, backend, &layer));
    ASSIGN_OR_RETURN(layer.o_proj, Upload(w.o_proj, backend));
    ASSIGN_OR_RETURN(layer.o_bias, Upload(w.o_bias, backend));
    ASSIGN_OR_RETURN(layer.post_attention_norm, Upload(w.post_attention_norm, backend));
    ASSIGN_OR_RETURN(layer.down_proj, Upload(w.down_proj, backend));
    out.layers.push_back(std::move(layer));
  }
  ASSIGN_OR_RETURN(out.final_norm, Upload(weights.final_norm, backend));
  if (weights.lm_head.data == weights.embed_tokens.data) {
    out.lm_head.data = out.embed_tokens.data;  // tied: one copy serves both
    out.lm_head.dtype = out.embed_tokens.dtype;
  } else {
    ASSIGN_OR_RETURN(out.lm_head, Upload(weights.lm_head, backend));
  }
  const std::vector<float> inv_freq = RopeInverseFrequencies(RopeSpecFor(weights.config));
  MemorySpace* memory = backend->memory();
  ASSIGN_OR_RETURN(out.inv_freq, Buffer::Allocate(memory, inv_freq.size() * sizeof(float)));
  RETURN_IF_ERROR(
      memory->CopyFromHost(out.inv_freq.data(), inv_freq.data(), inv_freq.size() * sizeof(float)));
  return out;
}

}  // namespace lserve
