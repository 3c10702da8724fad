// Params of the forward pass's per-token ops, shared by every backend. Data pointers are
// backend memory; element types come from `dtype` (activations, weights and biases) so
// that one struct serves the float32 CPU kernels and the bf16 CUDA kernels. Row strides
// are in elements; 0 means packed.
#ifndef LSERVE_KERNELS_LAYER_PARAMS_H_
#define LSERVE_KERNELS_LAYER_PARAMS_H_

#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/params_equality.h"

namespace lserve {

// out[r] = table[ids[r]]: token embeddings, and any row gather.
struct EmbeddingParams {
  const void* table = nullptr;   // [table_rows][dim]
  const int32_t* ids = nullptr;  // [rows], each in [0, table_rows)
  void* out = nullptr;           // [rows][dim]
  int64_t rows = 0;
  int64_t dim = 0;
  int64_t table_rows = 0;
  DType dtype = DType::kF32;
  LSERVE_PARAMS_EQUALITY(EmbeddingParams);
};

// Hugging Face LlamaRMSNorm of each row, out = weight * x / sqrt(mean(x^2) + eps). With
// `residual` set the residual add is fused in front: residual += x (residual keeps the
// sum, packed rows of `dim`) and out = norm(residual).
struct RmsNormParams {
  const void* x = nullptr;       // [rows][x_row_stride]
  const void* weight = nullptr;  // [dim]
  void* out = nullptr;           // [rows][out_row_stride]; may be x when the strides match
  int64_t rows = 0;
  int64_t dim = 0;
  int64_t x_row_stride = 0;
  int64_t out_row_stride = 0;
  float eps = 1e-6f;
  void* residual = nullptr;
  DType dtype = DType::kF32;
  LSERVE_PARAMS_EQUALITY(RmsNormParams);
};

// out = silu(gate) * up, silu(g) = g / (1 + exp(-g)); gate and up may be the halves of a
// fused gate_up projection.
struct SiluMulParams {
  const void* gate = nullptr;  // [rows][gate_row_stride]
  const void* up = nullptr;    // [rows][up_row_stride]
  void* out = nullptr;         // [rows][out_row_stride]; may be gate or up
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t gate_row_stride = 0;
  int64_t up_row_stride = 0;
  int64_t out_row_stride = 0;
  DType dtype = DType::kF32;
  LSERVE_PARAMS_EQUALITY(SiluMulParams);
};

// Rotary embedding in place, rotate-half layout. Token t's heads start at
// x + t * token_stride, head h at + h * head_dim. With a = float(positions[t]) * inv_freq[i]
// (a float32 product, as transformers forms it), for i < D/2:
//   v'[i] = v[i] cos a - v[i + D/2] sin a,   v'[i + D/2] = v[i + D/2] cos a + v[i] sin a.
// inv_freq comes from RopeInverseFrequencies (kernels/rope_frequencies.h).
struct RopeParams {
  void* x = nullptr;
  const int32_t* positions = nullptr;  // [num_tokens], in [0, 2^24)
  const float* inv_freq = nullptr;     // [head_dim / 2]
  int64_t num_tokens = 0;
  int num_heads = 0;
  int head_dim = 0;
  int64_t token_stride = 0;
  DType dtype = DType::kF32;
  LSERVE_PARAMS_EQUALITY(RopeParams);
};

// y[m][n] = x[m][k] . w[n][k]^T + bias[n]: a Hugging Face Linear ([out, in] weights).
// x, w and bias are `dtype`; y is `out_dtype` (logits come out in float32).
struct GemmParams {
  const void* x = nullptr;
  const void* w = nullptr;
  const void* bias = nullptr;  // [n] or null
  void* y = nullptr;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  DType dtype = DType::kF32;
  DType out_dtype = DType::kF32;
  LSERVE_PARAMS_EQUALITY(GemmParams);
};

// The MLP's gated activation in one op: y[m][n] = silu(x . gate^T) * (x . up^T), where w
// holds gate's n rows then up's n rows ([2n][k], Hugging Face's joined gate_up_proj), all
// `dtype`. Both products are rounded to `dtype` before the activation, as a GEMM into
// `scratch` ([m][2n]) followed by SiluMul gives them; a backend that fuses the two may
// leave scratch untouched.
struct GemmSiluMulParams {
  const void* x = nullptr;
  const void* w = nullptr;
  void* y = nullptr;
  void* scratch = nullptr;
  int64_t m = 0;
  int64_t n = 0;
  int64_t k = 0;
  DType dtype = DType::kF32;
  LSERVE_PARAMS_EQUALITY(GemmSiluMulParams);
};

// The two ops a GemmSiluMul stands for: x . w^T into scratch, then SiluMul of its halves.
inline GemmParams GatedProduct(const GemmSiluMulParams& p) {
  return {p.x, p.w, nullptr, p.scratch, p.m, 2 * p.n, p.k, p.dtype, p.dtype};
}
inline SiluMulParams GatedActivation(const GemmSiluMulParams& p) {
  const char* gate = static_cast<const char*>(p.scratch);
  return {gate, gate + p.n * DTypeSize(p.dtype), p.y, p.m, p.n, 2 * p.n, 2 * p.n, p.n, p.dtype};
}

}  // namespace lserve

#endif  // LSERVE_KERNELS_LAYER_PARAMS_H_
