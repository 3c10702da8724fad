#include "kernels/cuda/device.h"

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstdlib>
#include <string_view>

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

bool ChainedLaunchEnabled() {
  // Read at every launch (a few hundred ns), so a test can compare both ways.
  const char* off = std::getenv("LSERVE_PDL");
  if (off != nullptr && std::string_view(off) == "0") return false;
  // Per device: 0 unknown, 1 no, 2 yes.
  static std::atomic<int> capable[64] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= 64) return false;
  int known = capable[device].load(std::memory_order_relaxed);
  if (known == 0) {
    int major = 0;
    (void)cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    known = major >= 9 ? 2 : 1;
    capable[device].store(known, std::memory_order_relaxed);
  }
  return known == 2;
}

bool IsSm90Device(int device) {
  int major = 0;
  int minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return major == 9 && minor == 0;
}

int CurrentDeviceMultiprocessors() {
  static const int count = [] {
    int device = 0;
    int sms = 132;
    (void)cudaGetDevice(&device);
    (void)cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    return sms;
  }();
  return count;
}

}  // namespace lserve::cuda
