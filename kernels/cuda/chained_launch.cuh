// Programmatic dependent launch (sm_90 and later). A kernel launched chained may be
// scheduled while the kernel before it on the stream is still running, so its launch and
// block scheduling overlap that kernel's tail; it calls ChainWait() first, which returns
// once the previous kernel has finished and its writes are visible. A decode step is a
// chain of a few hundred short kernels, where those gaps add up. Kernels launched plainly
// (cuBLAS, copies) keep the stream's full ordering. LSERVE_PDL=0 turns chaining off.
#ifndef LSERVE_KERNELS_CUDA_CHAINED_LAUNCH_CUH_
#define LSERVE_KERNELS_CUDA_CHAINED_LAUNCH_CUH_

#include <cuda_runtime.h>

#include "kernels/cuda/device.h"

namespace lserve::cuda {

// At the top of every kernel that may be launched chained, before it reads or writes
// global memory: waits for the previous kernel, then lets the next one be scheduled. A
// no-op for a kernel launched plainly, and before sm_90.
__device__ __forceinline__ void ChainWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Launches `kernel` chained to the previous kernel on `stream` where the device allows
// it (ChainedLaunchEnabled), else plainly.
template <typename... KernelArgs, typename... Args>
cudaError_t LaunchChained(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                          cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute chained[1];
  chained[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  chained[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  config.attrs = chained;
  config.numAttrs = ChainedLaunchEnabled() ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, static_cast<Args&&>(args)...);
}

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_CHAINED_LAUNCH_CUH_
