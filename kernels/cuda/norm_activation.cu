#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/chained_launch.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/norm_activation.h"

namespace lserve::cuda {
namespace {

using internal::kBf16PerVector;

// Typed views of the shared Params that the kernels take by value.
struct RmsNormArgs {
  const uint16_t* x;
  const uint16_t* weight;
  uint16_t* out;
  int64_t rows;
  int64_t dim;
  int64_t x_row_stride;
  int64_t out_row_stride;
  float eps;
  uint16_t* residual;  // [rows][dim] or null
};

struct SiluMulArgs {
  const uint16_t* gate;
  const uint16_t* up;
  uint16_t* out;
  int64_t rows;
  int64_t cols;
  int64_t gate_row_stride;
  int64_t up_row_stride;
  int64_t out_row_stride;
};

constexpr int kRmsNormMaxThreads = 512;
constexpr int kElementwiseThreads = 256;
// Grid-stride loops cover the rest; this many blocks fill any current GPU several times.
constexpr int64_t kMaxElementwiseBlocks = 1 << 16;

// Vectors of a row each thread keeps in registers between the passes (rows up to
// kRmsNormCached * kRmsNormMaxThreads vectors; the rest are re-read).
constexpr int kRmsNormCached = 2;

// One block per row. Pass 1 reduces the sum of squares (with a residual, of
// residual + x, rounded to bf16 and stored back into the residual); pass 2 scales the row
// and writes it, from the values pass 1 kept in registers (re-read from L1/L2 past
// them). Each thread touches the same elements in both passes, and the reduction's
// barrier separates them, so out may alias x. The norm weight, which no kernel writes,
// is read before waiting for the previous kernel.
template <int kVec>
__global__ void RmsNormKernel(RmsNormArgs p) {
  const int64_t row = blockIdx.x;
  const int64_t num_vectors = p.dim / kVec;
  float weights[kRmsNormCached][kVec];
  float values[kRmsNormCached][kVec];
#pragma unroll
  for (int i = 0; i < kRmsNormCached; ++i) {
    const int64_t v = threadIdx.x + int64_t{i} * blockDim.x;
    if (v < num_vectors) internal::LoadBf16<kVec>(p.weight + v * kVec, weights[i]);
  }
  ChainWait();
  const uint16_t* x = p.x + row * p.x_row_stride;
  uint16_t* out = p.out + row * p.out_row_stride;
  uint16_t* residual = p.residual != nullptr ? p.residual + row * p.dim : nullptr;

  // The row's values at vector v (with a residual, the rounded sum, stored back).
  auto load = [&](int64_t v, float(&dst)[kVec]) {
    internal::LoadBf16<kVec>(x + v * kVec, dst);
    if (residual == nullptr) return;
    float sums[kVec];
    internal::LoadBf16<kVec>(residual + v * kVec, sums);
#pragma unroll
    for (int k = 0; k < kVec; ++k) {
      dst[k] = internal::Bf16ToFloat(internal::FloatToBf16(sums[k] + dst[k]));
    }
    internal::StoreBf16<kVec>(residual + v * kVec, dst);
  };
  float sum_squares = 0.0f;
#pragma unroll
  for (int i = 0; i < kRmsNormCached; ++i) {
    const int64_t v = threadIdx.x + int64_t{i} * blockDim.x;
    if (v >= num_vectors) break;
    load(v, values[i]);
#pragma unroll
    for (int k = 0; k < kVec; ++k) sum_squares += values[i][k] * values[i][k];
  }
  for (int64_t v = threadIdx.x + int64_t{kRmsNormCached} * blockDim.x; v < num_vectors;
       v += blockDim.x) {
    float rest[kVec];
    load(v, rest);
#pragma unroll
    for (int k = 0; k < kVec; ++k) sum_squares += rest[k] * rest[k];
  }
  sum_squares = internal::BlockSum(sum_squares);
  const float inv_rms = rsqrtf(sum_squares / static_cast<float>(p.dim) + p.eps);

#pragma unroll
  for (int i = 0; i < kRmsNormCached; ++i) {
    const int64_t v = threadIdx.x + int64_t{i} * blockDim.x;
    if (v >= num_vectors) break;
#pragma unroll
    for (int k = 0; k < kVec; ++k) values[i][k] = weights[i][k] * (values[i][k] * inv_rms);
    internal::StoreBf16<kVec>(out + v * kVec, values[i]);
  }
  const uint16_t* normed = residual != nullptr ? residual : x;
  for (int64_t v = threadIdx.x + int64_t{kRmsNormCached} * blockDim.x; v < num_vectors;
       v += blockDim.x) {
    float rest[kVec];
    float weight[kVec];
    internal::LoadBf16<kVec>(normed + v * kVec, rest);
    internal::LoadBf16<kVec>(p.weight + v * kVec, weight);
#pragma unroll
    for (int k = 0; k < kVec; ++k) rest[k] = weight[k] * (rest[k] * inv_rms);
    internal::StoreBf16<kVec>(out + v * kVec, rest);
  }
}

template <int kVec>
__global__ void SiluMulKernel(SiluMulArgs p) {
  ChainWait();
  const int64_t vectors_per_row = p.cols / kVec;
  const int64_t total = p.rows * vectors_per_row;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += step) {
    const int64_t row = i / vectors_per_row;
    const int64_t col = (i - row * vectors_per_row) * kVec;
    float gate[kVec];
    float up[kVec];
    internal::LoadBf16<kVec>(p.gate + row * p.gate_row_stride + col, gate);
    internal::LoadBf16<kVec>(p.up + row * p.up_row_stride + col, up);
#pragma unroll
    for (int k = 0; k < kVec; ++k) gate[k] = internal::Silu(gate[k]) * up[k];
    internal::StoreBf16<kVec>(p.out + row * p.out_row_stride + col, gate);
  }
}

// The vector widths the launchers dispatch to.
template __global__ void RmsNormKernel<1>(RmsNormArgs);
template __global__ void RmsNormKernel<kBf16PerVector>(RmsNormArgs);
template __global__ void SiluMulKernel<1>(SiluMulArgs);
template __global__ void SiluMulKernel<kBf16PerVector>(SiluMulArgs);

absl::Status CheckStride(const char* name, int64_t stride, int64_t width) {
  if (stride >= width) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(name, " (", stride, ") is smaller than the row width ", width));
}

bool VectorFriendly(const void* pointer, int64_t stride) {
  return internal::IsAligned16(pointer) && stride % kBf16PerVector == 0;
}

}  // namespace

absl::Status RmsNorm(const RmsNormParams& params, void* stream) {
  if (params.dtype != DType::kBF16) {
    return absl::InvalidArgumentError("cuda RmsNorm takes bf16 tensors");
  }
  RmsNormArgs p{static_cast<const uint16_t*>(params.x),
                static_cast<const uint16_t*>(params.weight),
                static_cast<uint16_t*>(params.out),
                params.rows,
                params.dim,
                params.x_row_stride,
                params.out_row_stride,
                params.eps,
                static_cast<uint16_t*>(params.residual)};
  if (p.rows < 0 || p.dim <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("RmsNorm: need rows >= 0 and dim > 0, got rows=", p.rows, " dim=", p.dim));
  }
  if (p.rows > 0x7FFFFFFF) {
    return absl::InvalidArgumentError(absl::StrCat("RmsNorm: too many rows (", p.rows, ")"));
  }
  if (!(p.eps >= 0.0f) || !std::isfinite(p.eps)) {
    return absl::InvalidArgumentError(absl::StrCat("RmsNorm: bad eps ", p.eps));
  }
  if (p.x_row_stride == 0) p.x_row_stride = p.dim;
  if (p.out_row_stride == 0) p.out_row_stride = p.dim;
  RETURN_IF_ERROR(CheckStride("RmsNorm: x_row_stride", p.x_row_stride, p.dim));
  RETURN_IF_ERROR(CheckStride("RmsNorm: out_row_stride", p.out_row_stride, p.dim));
  if (p.rows == 0) return absl::OkStatus();
  if (p.x == nullptr || p.weight == nullptr || p.out == nullptr) {
    return absl::InvalidArgumentError("RmsNorm: x, weight and out must be non-null");
  }

  const bool vectorized = p.dim % kBf16PerVector == 0 && VectorFriendly(p.x, p.x_row_stride) &&
                          VectorFriendly(p.out, p.out_row_stride) &&
                          internal::IsAligned16(p.weight) && internal::IsAligned16(p.residual);
  const int64_t num_vectors = vectorized ? p.dim / kBf16PerVector : p.dim;
  const int threads =
      static_cast<int>(std::min<int64_t>(kRmsNormMaxThreads, (num_vectors + 31) / 32 * 32));
  const cudaStream_t s = internal::AsStream(stream);
  const dim3 grid(static_cast<unsigned>(p.rows));
  if (vectorized) {
    LaunchChained(RmsNormKernel<kBf16PerVector>, grid, threads, 0, s, p);
  } else {
    LaunchChained(RmsNormKernel<1>, grid, threads, 0, s, p);
  }
  return internal::CheckLaunch("RmsNormKernel");
}

absl::Status SiluMul(const SiluMulParams& params, void* stream) {
  if (params.dtype != DType::kBF16) {
    return absl::InvalidArgumentError("cuda SiluMul takes bf16 tensors");
  }
  SiluMulArgs p{static_cast<const uint16_t*>(params.gate),
                static_cast<const uint16_t*>(params.up),
                static_cast<uint16_t*>(params.out),
                params.rows,
                params.cols,
                params.gate_row_stride,
                params.up_row_stride,
                params.out_row_stride};
  if (p.rows < 0 || p.cols <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("SiluMul: need rows >= 0 and cols > 0, got rows=", p.rows, " cols=", p.cols));
  }
  if (p.gate_row_stride == 0) p.gate_row_stride = p.cols;
  if (p.up_row_stride == 0) p.up_row_stride = p.cols;
  if (p.out_row_stride == 0) p.out_row_stride = p.cols;
  for (const auto& [name, stride] : {std::pair{"SiluMul: gate_row_stride", p.gate_row_stride},
                                     std::pair{"SiluMul: up_row_stride", p.up_row_stride},
                                     std::pair{"SiluMul: out_row_stride", p.out_row_stride}}) {
    RETURN_IF_ERROR(CheckStride(name, stride, p.cols));
  }
  if (p.rows == 0) return absl::OkStatus();
  if (p.gate == nullptr || p.up == nullptr || p.out == nullptr) {
    return absl::InvalidArgumentError("SiluMul: gate, up and out must be non-null");
  }

  const bool vectorized =
      p.cols % kBf16PerVector == 0 && VectorFriendly(p.gate, p.gate_row_stride) &&
      VectorFriendly(p.up, p.up_row_stride) && VectorFriendly(p.out, p.out_row_stride);
  const int64_t work = p.rows * (vectorized ? p.cols / kBf16PerVector : p.cols);
  const int64_t blocks = std::min<int64_t>(kMaxElementwiseBlocks,
                                           (work + kElementwiseThreads - 1) / kElementwiseThreads);
  const cudaStream_t s = internal::AsStream(stream);
  const dim3 grid(static_cast<unsigned>(blocks));
  if (vectorized) {
    LaunchChained(SiluMulKernel<kBf16PerVector>, grid, kElementwiseThreads, 0, s, p);
  } else {
    LaunchChained(SiluMulKernel<1>, grid, kElementwiseThreads, 0, s, p);
  }
  return internal::CheckLaunch("SiluMulKernel");
}

}  // namespace lserve::cuda
