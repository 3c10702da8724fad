// Rotary position embedding in the rotate-half layout of Hugging Face Llama.
#ifndef LSERVE_KERNELS_CPU_ROPE_H_
#define LSERVE_KERNELS_CPU_ROPE_H_

#include <cstdint>
#include <vector>

namespace lserve::cpu {

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

// Rotates x: [num_tokens][num_heads][head_dim] in place; token t sits at positions[t].
// For each head vector v and i < head_dim/2, with a = float(position) * inv_freq[i]
// (float32 product, as transformers forms it):
//   v'[i] = v[i]·cos a − v[i + D/2]·sin a,   v'[i + D/2] = v[i + D/2]·cos a + v[i]·sin a.
void ApplyRope(float* x, int64_t num_tokens, int num_heads, int head_dim, const int32_t* positions,
               const float* inv_freq);

// Oracle for ApplyRope in double math (angle = double(position) · inv_freq[i]).
void ApplyRopeReference(float* x, int64_t num_tokens, int num_heads, int head_dim,
                        const int32_t* positions, const float* inv_freq);

}  // namespace lserve::cpu

#endif  // LSERVE_KERNELS_CPU_ROPE_H_
