// The bias add of GEMMs whose output is float32 (cuBLASLt's bias epilogue takes a bias of
// the output's type; ours are bf16).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/chained_launch.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemm.h"

namespace lserve::cuda {
namespace {

__global__ void AddBiasKernel(float* y, const uint16_t* bias, int64_t rows, int64_t cols) {
  ChainWait();
  const int64_t total = rows * cols;
  const int64_t step = int64_t{gridDim.x} * blockDim.x;
  for (int64_t i = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; i < total; i += step) {
    y[i] += internal::Bf16ToFloat(bias[i % cols]);
  }
}

}  // namespace

absl::Status AddBiasF32(float* y, const void* bias, int64_t rows, int64_t cols, void* stream) {
  if (rows <= 0 || cols <= 0) return absl::OkStatus();
  const int64_t blocks = std::min<int64_t>((rows * cols + 255) / 256, 1 << 16);
  LaunchChained(AddBiasKernel, static_cast<unsigned>(blocks), 256, 0, internal::AsStream(stream), y,
                static_cast<const uint16_t*>(bias), rows, cols);
  return internal::CheckLaunch("AddBiasKernel");
}

}  // namespace lserve::cuda
