// RoPE inverse frequencies of a Hugging Face config, computed once on the host for
// every backend.
#ifndef LSERVE_KERNELS_ROPE_FREQUENCIES_H_
#define LSERVE_KERNELS_ROPE_FREQUENCIES_H_

#include <vector>

namespace lserve {

// The `rope_scaling` variants of a Hugging Face config: none, "linear" and "llama3".
enum class RopeKind { kDefault, kLinear, kLlama3 };

struct RopeSpec {
  int head_dim = 0;
  float theta = 10000.0f;
  RopeKind kind = RopeKind::kDefault;
  // kLinear and kLlama3: frequencies are divided by `factor` (fully or partly).
  float factor = 1.0f;
  // kLlama3 only.
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position_embeddings = 8192;
};

// inv_freq[i] for i < head_dim / 2, rounded step by step in float32 exactly as
// transformers computes it (default, linear and llama3 rope parameters), so that angles
// at large positions agree with it bit for bit.
std::vector<float> RopeInverseFrequencies(const RopeSpec& spec);

}  // namespace lserve

#endif  // LSERVE_KERNELS_ROPE_FREQUENCIES_H_
