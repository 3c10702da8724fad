#include "kernels/cpu/norm_activation.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/fast_exp.h"

namespace lserve::cpu {
namespace {

// Partial sums are kept in this many independent lanes: float addition is not associative,
// so without -ffast-math the compiler only vectorizes a reduction that is written with
// explicit lanes.
constexpr int kLanes = 16;

float SumOfSquares(const float* x, int64_t n) {
  float lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] += x[i + l] * x[i + l];
  float s = 0.0f;
  for (; i < n; ++i) s += x[i] * x[i];
  for (int l = 0; l < kLanes; ++l) s += lanes[l];
  return s;
}

float MaxOf(const float* x, int64_t n) {
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  float lanes[kLanes];
  std::fill(lanes, lanes + kLanes, kNegInf);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int l = 0; l < kLanes; ++l) lanes[l] = std::max(lanes[l], x[i + l]);
  float m = kNegInf;
  for (; i < n; ++i) m = std::max(m, x[i]);
  for (int l = 0; l < kLanes; ++l) m = std::max(m, lanes[l]);
  return m;
}

}  // namespace

void RmsNorm(const float* x, int64_t rows, int64_t dim, const float* weight, float eps,
             float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    float* outr = out + r * dim;
    const float mean = SumOfSquares(xr, dim) / static_cast<float>(dim);
    const float inv = 1.0f / std::sqrt(mean + eps);
    // Normalize first, then scale by the weight: the order Hugging Face rounds in.
    for (int64_t i = 0; i < dim; ++i) outr[i] = weight[i] * (xr[i] * inv);
  }
}

void RmsNormReference(const float* x, int64_t rows, int64_t dim, const float* weight, float eps,
                      float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * dim;
    double s = 0.0;
    for (int64_t i = 0; i < dim; ++i) s += static_cast<double>(xr[i]) * xr[i];
    const double inv = 1.0 / std::sqrt(s / static_cast<double>(dim) + eps);
    for (int64_t i = 0; i < dim; ++i) {
      out[r * dim + i] = static_cast<float>(static_cast<double>(weight[i]) * xr[i] * inv);
    }
  }
}

void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + FastExp(-g)) * up[i];
  }
}

void SiluMulReference(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
  }
}

void AddInPlace(float* acc, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += x[i];
}

void Softmax(float* x, int64_t n) {
  if (n <= 0) return;
  const float max = MaxOf(x, n);
  if (max == -std::numeric_limits<float>::infinity()) {
    std::fill(x, x + n, 0.0f);
    return;
  }
  // The max entry contributes exp(0) = 1, so the sum is at least 1.
  const float inv = 1.0f / ExpShiftedAndSum(x, n, max);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void SoftmaxReference(const float* x, int64_t n, double* out) {
  if (n <= 0) return;
  double max = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < n; ++i) max = std::max(max, static_cast<double>(x[i]));
  if (max == -std::numeric_limits<double>::infinity()) {
    std::fill(out, out + n, 0.0);
    return;
  }
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    out[i] = std::exp(static_cast<double>(x[i]) - max);
    sum += out[i];
  }
  for (int64_t i = 0; i < n; ++i) out[i] /= sum;
}

namespace {

absl::Status CheckF32(DType dtype, const char* op) {
  if (dtype == DType::kF32) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("cpu ", op, " computes in float32 only"));
}

}  // namespace

absl::Status RmsNorm(const RmsNormParams& p) {
  if (absl::Status s = CheckF32(p.dtype, "RMSNorm"); !s.ok()) return s;
  if (p.rows < 0 || p.dim <= 0) return absl::InvalidArgumentError("RMSNorm: bad shape");
  if (p.rows == 0) return absl::OkStatus();
  const int64_t x_stride = p.x_row_stride == 0 ? p.dim : p.x_row_stride;
  const int64_t out_stride = p.out_row_stride == 0 ? p.dim : p.out_row_stride;
  if (x_stride < p.dim || out_stride < p.dim) {
    return absl::InvalidArgumentError("RMSNorm: row stride below dim");
  }
  const float* x = static_cast<const float*>(p.x);
  const float* weight = static_cast<const float*>(p.weight);
  float* out = static_cast<float*>(p.out);
  float* residual = static_cast<float*>(p.residual);
  for (int64_t r = 0; r < p.rows; ++r) {
    const float* src = x + r * x_stride;
    if (residual != nullptr) {
      AddInPlace(residual + r * p.dim, src, p.dim);
      src = residual + r * p.dim;
    }
    RmsNorm(src, 1, p.dim, weight, p.eps, out + r * out_stride);
  }
  return absl::OkStatus();
}

absl::Status SiluMul(const SiluMulParams& p) {
  if (absl::Status s = CheckF32(p.dtype, "SiluMul"); !s.ok()) return s;
  if (p.rows < 0 || p.cols < 0) return absl::InvalidArgumentError("SiluMul: bad shape");
  const int64_t gate_stride = p.gate_row_stride == 0 ? p.cols : p.gate_row_stride;
  const int64_t up_stride = p.up_row_stride == 0 ? p.cols : p.up_row_stride;
  const int64_t out_stride = p.out_row_stride == 0 ? p.cols : p.out_row_stride;
  if (gate_stride < p.cols || up_stride < p.cols || out_stride < p.cols) {
    return absl::InvalidArgumentError("SiluMul: row stride below cols");
  }
  const float* gate = static_cast<const float*>(p.gate);
  const float* up = static_cast<const float*>(p.up);
  float* out = static_cast<float*>(p.out);
  if (gate_stride == p.cols && up_stride == p.cols && out_stride == p.cols) {
    SiluMul(gate, up, p.rows * p.cols, out);
    return absl::OkStatus();
  }
  for (int64_t r = 0; r < p.rows; ++r) {
    SiluMul(gate + r * gate_stride, up + r * up_stride, p.cols, out + r * out_stride);
  }
  return absl::OkStatus();
}

absl::Status Embedding(const EmbeddingParams& p) {
  if (absl::Status s = CheckF32(p.dtype, "embedding"); !s.ok()) return s;
  if (p.rows < 0 || p.dim <= 0) return absl::InvalidArgumentError("embedding: bad shape");
  const float* table = static_cast<const float*>(p.table);
  float* out = static_cast<float*>(p.out);
  for (int64_t r = 0; r < p.rows; ++r) {
    const int32_t id = p.ids[r];
    if (id < 0 || id >= p.table_rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("embedding: id ", id, " is outside [0, ", p.table_rows, ")"));
    }
    std::copy(table + int64_t{id} * p.dim, table + (int64_t{id} + 1) * p.dim, out + r * p.dim);
  }
  return absl::OkStatus();
}

}  // namespace lserve::cpu
