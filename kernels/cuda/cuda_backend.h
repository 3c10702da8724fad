// The CUDA backend: bf16 storage and float32 math on one device, with the KV pools,
// weights and activations in device memory. Its attention serves head_dim 64 and 128
// with GQA groups up to 8 (CheckAttentionHeads); the CPU backend serves the rest.
#ifndef LSERVE_KERNELS_CUDA_CUDA_BACKEND_H_
#define LSERVE_KERNELS_CUDA_CUDA_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace lserve::cuda {

// Device memory of the current device through cudaMalloc and blocking copies.
MemorySpace* DeviceMemory();

// FAILED_PRECONDITION when no device is usable.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(int device);

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_CUDA_BACKEND_H_
