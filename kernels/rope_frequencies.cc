// Built with -ffp-contract=off (see kernels/CMakeLists.txt): every multiply and add below
// must round separately, as PyTorch's elementwise ops do, or a fused multiply-add would
// shift inv_freq by an ulp and the angle at position 100k by ~1e-2 rad.
#include "kernels/rope_frequencies.h"

#include <cmath>
#include <numbers>
#include <vector>

#include "common/logging.h"

namespace lserve {
namespace {

// transformers' _compute_default_rope_parameters:
//   1.0 / (base ** (arange(0, dim, 2, int64).float() / dim))   (all float32;
//   `1.0 / t` is t.reciprocal()).
std::vector<float> DefaultInverseFrequencies(int head_dim, float theta) {
  std::vector<float> inv_freq(head_dim / 2);
  for (int i = 0; i < head_dim / 2; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    inv_freq[i] = 1.0f / std::pow(theta, exponent);
  }
  return inv_freq;
}

// transformers' _compute_llama3_parameters, op by op. Python scalars combined with float32
// tensors are cast to float32 first, and `s / t` evaluates as t.reciprocal() * s.
void ApplyLlama3Scaling(const RopeSpec& spec, std::vector<float>& inv_freq) {
  const double old_context = spec.original_max_position_embeddings;
  const float factor = spec.factor;
  const float low = spec.low_freq_factor;
  const float low_freq_wavelen = static_cast<float>(old_context / spec.low_freq_factor);
  const float high_freq_wavelen = static_cast<float>(old_context / spec.high_freq_factor);
  const float two_pi = static_cast<float>(2.0 * std::numbers::pi);
  const float band = static_cast<float>(static_cast<double>(spec.high_freq_factor) -
                                        static_cast<double>(spec.low_freq_factor));
  for (float& f : inv_freq) {
    const float wavelen = (1.0f / f) * two_pi;
    float scaled = wavelen > low_freq_wavelen ? f / factor : f;
    const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
    if (medium) {
      const float smooth = ((1.0f / wavelen) * static_cast<float>(old_context) - low) / band;
      const float kept = (1.0f - smooth) * scaled / factor;
      scaled = kept + smooth * scaled;
    }
    f = scaled;
  }
}

}  // namespace

std::vector<float> RopeInverseFrequencies(const RopeSpec& spec) {
  CHECK_GT(spec.head_dim, 0);
  CHECK_EQ(spec.head_dim % 2, 0);
  std::vector<float> inv_freq = DefaultInverseFrequencies(spec.head_dim, spec.theta);
  switch (spec.kind) {
    case RopeKind::kDefault:
      break;
    case RopeKind::kLinear:
      for (float& f : inv_freq) f = f / spec.factor;
      break;
    case RopeKind::kLlama3:
      ApplyLlama3Scaling(spec, inv_freq);
      break;
  }
  return inv_freq;
}

}  // namespace lserve
