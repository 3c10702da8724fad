// Built with -ffp-contract=off (see kernels/CMakeLists.txt): every multiply and add below
// must round separately, as PyTorch's elementwise ops do, or a fused multiply-add would
// shift inv_freq by an ulp and the angle at position 100k by ~1e-2 rad.
#include "kernels/cpu/rope.h"

#include <cmath>
#include <numbers>
#include <vector>

#include "common/logging.h"

namespace lserve::cpu {
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

void ApplyRope(float* x, int64_t num_tokens, int num_heads, int head_dim, const int32_t* positions,
               const float* inv_freq) {
  CHECK_EQ(head_dim % 2, 0);
  const int half = head_dim / 2;
  std::vector<float> cos_table(half);
  std::vector<float> sin_table(half);
  for (int64_t t = 0; t < num_tokens; ++t) {
    // The angle is a float32 product and cos/sin take the float angle: transformers forms
    // freqs = inv_freq.float() @ position_ids.float() and takes emb.cos() in float32.
    const float pos = static_cast<float>(positions[t]);
    for (int i = 0; i < half; ++i) {
      const float angle = pos * inv_freq[i];
      cos_table[i] = std::cos(angle);
      sin_table[i] = std::sin(angle);
    }
    const float* c = cos_table.data();
    const float* s = sin_table.data();
    for (int h = 0; h < num_heads; ++h) {
      float* lo = x + (t * num_heads + h) * static_cast<int64_t>(head_dim);
      float* hi = lo + half;
      for (int i = 0; i < half; ++i) {
        const float a = lo[i];
        const float b = hi[i];
        lo[i] = a * c[i] - b * s[i];
        hi[i] = b * c[i] + a * s[i];
      }
    }
  }
}

void ApplyRopeReference(float* x, int64_t num_tokens, int num_heads, int head_dim,
                        const int32_t* positions, const float* inv_freq) {
  CHECK_EQ(head_dim % 2, 0);
  const int half = head_dim / 2;
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int h = 0; h < num_heads; ++h) {
      float* v = x + (t * num_heads + h) * static_cast<int64_t>(head_dim);
      for (int i = 0; i < half; ++i) {
        const double angle = static_cast<double>(positions[t]) * inv_freq[i];
        const double c = std::cos(angle);
        const double s = std::sin(angle);
        const double a = v[i];
        const double b = v[i + half];
        v[i] = static_cast<float>(a * c - b * s);
        v[i + half] = static_cast<float>(b * c + a * s);
      }
    }
  }
}

}  // namespace lserve::cpu
