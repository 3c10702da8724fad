// Dense float32 linear layer (y = x · wᵀ + b) for the CPU backend.
#ifndef LSERVE_KERNELS_CPU_MATMUL_H_
#define LSERVE_KERNELS_CPU_MATMUL_H_

#include <cstdint>

#include "absl/status/status.h"
#include "common/thread_pool.h"
#include "kernels/layer_params.h"

namespace lserve::cpu {

// y[m][n] = x[m][k] · w[n][k]ᵀ + bias[n]. All row-major float32; w is a Hugging Face
// Linear weight laid out [out_features, in_features]; bias may be null. y must not alias x
// or w. pool may be null (single-threaded). Accumulates in float32.
void Linear(const float* x, int64_t m, int64_t k, const float* w, int64_t n, const float* bias,
            float* y, ThreadPool* pool);

// Launcher over GemmParams (float32 only).
absl::Status Gemm(const GemmParams& params, ThreadPool* pool);

// Naive oracle for Linear: same contract, double accumulation, one thread.
void LinearReference(const float* x, int64_t m, int64_t k, const float* w, int64_t n,
                     const float* bias, float* y);

}  // namespace lserve::cpu

#endif  // LSERVE_KERNELS_CPU_MATMUL_H_
