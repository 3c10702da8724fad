// Built with -ffp-contract=off (see kernels/CMakeLists.txt): every multiply and add below
// must round separately, as PyTorch's elementwise ops do, or a fused multiply-add would
// shift inv_freq by an ulp and the angle at position 100k by ~1e-2 rad.
#include "kernels/cpu/rope.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace lserve::cpu {

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

absl::Status ApplyRope(const RopeParams& p) {
  if (p.dtype != DType::kF32) {
    return absl::InvalidArgumentError("cpu RoPE computes in float32 only");
  }
  if (p.num_tokens < 0 || p.num_heads < 0 || p.head_dim <= 0 || p.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("RoPE: bad shape, head_dim ", p.head_dim));
  }
  if (p.num_tokens == 0 || p.num_heads == 0) return absl::OkStatus();
  if (p.x == nullptr || p.positions == nullptr || p.inv_freq == nullptr) {
    return absl::InvalidArgumentError("RoPE: null pointer");
  }
  const int64_t packed = int64_t{p.num_heads} * p.head_dim;
  const int64_t stride = p.token_stride == 0 ? packed : p.token_stride;
  if (stride < packed) return absl::InvalidArgumentError("RoPE: token_stride below the row");
  float* x = static_cast<float*>(p.x);
  if (stride == packed) {
    ApplyRope(x, p.num_tokens, p.num_heads, p.head_dim, p.positions, p.inv_freq);
  } else {
    for (int64_t t = 0; t < p.num_tokens; ++t) {
      ApplyRope(x + t * stride, 1, p.num_heads, p.head_dim, p.positions + t, p.inv_freq);
    }
  }
  return absl::OkStatus();
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
