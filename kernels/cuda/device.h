// Device discovery and stream synchronization for the CUDA backend. No CUDA types here:
// streams travel as `void*` (a cudaStream_t; nullptr is the legacy default stream).
#ifndef LSERVE_KERNELS_CUDA_DEVICE_H_
#define LSERVE_KERNELS_CUDA_DEVICE_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lserve::cuda {

// Number of visible CUDA devices; 0 when no driver or device is present. Never fails,
// prints nothing, and leaves no pending error behind for later launch checks.
int DeviceCount();

// Waits for all work queued on `stream` and reports any asynchronous kernel error.
absl::Status SynchronizeStream(void* stream);

// Whether work on `stream` is being captured into a CUDA graph (so nothing may synchronize).
absl::StatusOr<bool> StreamIsCapturing(void* stream);

// Whether kernels may be launched chained (chained_launch.cuh) on the current device:
// compute capability 9.0 or later, unless LSERVE_PDL=0.
bool ChainedLaunchEnabled();

// Whether `device` is of compute capability 9.0, where the sm_90a kernels (wgmma, tensor
// and bulk copies) run. False when it cannot be read (leaving no pending error).
bool IsSm90Device(int device);

// Multiprocessors of the current device, read once per process (132 when unreadable).
int CurrentDeviceMultiprocessors();

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_DEVICE_H_
