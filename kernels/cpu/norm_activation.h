// Row normalization, gated activation and softmax for the CPU backend (float32).
#ifndef LSERVE_KERNELS_CPU_NORM_ACTIVATION_H_
#define LSERVE_KERNELS_CPU_NORM_ACTIVATION_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/layer_params.h"

namespace lserve::cpu {

// Hugging Face LlamaRMSNorm over each of `rows` rows of length `dim`:
// out = weight * (x / sqrt(mean(x²) + eps)). Accumulates in float32. out may alias x.
void RmsNorm(const float* x, int64_t rows, int64_t dim, const float* weight, float eps, float* out);
// Oracle for RmsNorm with double accumulation.
void RmsNormReference(const float* x, int64_t rows, int64_t dim, const float* weight, float eps,
                      float* out);

// out = silu(gate) * up with silu(v) = v / (1 + exp(-v)). out may alias gate or up.
void SiluMul(const float* gate, const float* up, int64_t n, float* out);
// Oracle for SiluMul with double math.
void SiluMulReference(const float* gate, const float* up, int64_t n, float* out);

// Launchers over the shared Params (float32, any row strides, fused residual add).
absl::Status RmsNorm(const RmsNormParams& params);
absl::Status SiluMul(const SiluMulParams& params);
// out[r] = table[ids[r]]; ids out of range are INVALID_ARGUMENT.
absl::Status Embedding(const EmbeddingParams& params);

// acc[i] += x[i].
void AddInPlace(float* acc, const float* x, int64_t n);

// Numerically stable softmax of x[0, n) in place. -inf entries get probability 0; a row
// that is entirely -inf (nothing visible) becomes all zeros rather than NaN.
void Softmax(float* x, int64_t n);
// Oracle for Softmax in double, same conventions.
void SoftmaxReference(const float* x, int64_t n, double* out);

}  // namespace lserve::cpu

#endif  // LSERVE_KERNELS_CPU_NORM_ACTIVATION_H_
