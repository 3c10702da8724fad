#include "kernels/cuda/device.h"

#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_status.h"

namespace lserve::cuda {

int DeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    // Without a driver this fails; clear the error so the next launch check is not
    // blamed for it.
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

absl::Status SynchronizeStream(void* stream) {
  return internal::CudaStatus(cudaStreamSynchronize(internal::AsStream(stream)),
                              "cudaStreamSynchronize");
}

absl::StatusOr<bool> StreamIsCapturing(void* stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  const cudaError_t error = cudaStreamIsCapturing(internal::AsStream(stream), &capture);
  if (error != cudaSuccess) return internal::CudaStatus(error, "cudaStreamIsCapturing");
  return capture != cudaStreamCaptureStatusNone;
}

}  // namespace lserve::cuda
