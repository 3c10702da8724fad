// LSERVE_HOST_DEVICE marks plain C++ functions that CUDA kernels call too.
#ifndef LSERVE_KERNELS_HOST_DEVICE_H_
#define LSERVE_KERNELS_HOST_DEVICE_H_

#if defined(__CUDACC__)
#define LSERVE_HOST_DEVICE __host__ __device__
#else
#define LSERVE_HOST_DEVICE
#endif

#endif  // LSERVE_KERNELS_HOST_DEVICE_H_
