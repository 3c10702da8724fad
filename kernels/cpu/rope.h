// Rotary position embedding in the rotate-half layout of Hugging Face Llama.
#ifndef LSERVE_KERNELS_CPU_ROPE_H_
#define LSERVE_KERNELS_CPU_ROPE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/layer_params.h"
#include "kernels/rope_frequencies.h"

namespace lserve::cpu {

// Earlier home of the frequency computation; callers may still name it here.
using ::lserve::RopeInverseFrequencies;
using ::lserve::RopeKind;
using ::lserve::RopeSpec;

// Rotates x: [num_tokens][num_heads][head_dim] in place; token t sits at positions[t].
// For each head vector v and i < head_dim/2, with a = float(position) * inv_freq[i]
// (float32 product, as transformers forms it):
//   v'[i] = v[i]·cos a − v[i + D/2]·sin a,   v'[i + D/2] = v[i + D/2]·cos a + v[i]·sin a.
void ApplyRope(float* x, int64_t num_tokens, int num_heads, int head_dim, const int32_t* positions,
               const float* inv_freq);

// Launcher over RopeParams (float32, any token stride).
absl::Status ApplyRope(const RopeParams& params);

// Oracle for ApplyRope in double math (angle = double(position) · inv_freq[i]).
void ApplyRopeReference(float* x, int64_t num_tokens, int num_heads, int head_dim,
                        const int32_t* positions, const float* inv_freq);

}  // namespace lserve::cpu

#endif  // LSERVE_KERNELS_CPU_ROPE_H_
