#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/cuda_status.h"

namespace lserve::cuda {
namespace {

using internal::kBf16PerVector;

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 1 << 16;

// Grid-stride over whole vectors of kVec elements, then the n % kVec tail element-wise.
// kVec == 8 moves 32 bytes of float and 16 bytes of bf16 per step; both pointers must be
// 16-byte aligned.
template <int kVec>
__global__ void F32ToBf16Kernel(const float* __restrict__ in, uint16_t* __restrict__ out,
                                int64_t n) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t num_vectors = n / kVec;
  for (int64_t v = first; v < num_vectors; v += step) {
    float values[kVec];
    if constexpr (kVec == kBf16PerVector) {
      const float4 a = reinterpret_cast<const float4*>(in)[2 * v];
      const float4 b = reinterpret_cast<const float4*>(in)[2 * v + 1];
      values[0] = a.x, values[1] = a.y, values[2] = a.z, values[3] = a.w;
      values[4] = b.x, values[5] = b.y, values[6] = b.z, values[7] = b.w;
    } else {
      values[0] = in[v];
    }
    internal::StoreBf16<kVec>(out + v * kVec, values);
  }
  for (int64_t i = num_vectors * kVec + first; i < n; i += step) {
    out[i] = internal::FloatToBf16(in[i]);
  }
}

template <int kVec>
__global__ void Bf16ToF32Kernel(const uint16_t* __restrict__ in, float* __restrict__ out,
                                int64_t n) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t num_vectors = n / kVec;
  for (int64_t v = first; v < num_vectors; v += step) {
    float values[kVec];
    internal::LoadBf16<kVec>(in + v * kVec, values);
    if constexpr (kVec == kBf16PerVector) {
      reinterpret_cast<float4*>(out)[2 * v] =
          make_float4(values[0], values[1], values[2], values[3]);
      reinterpret_cast<float4*>(out)[2 * v + 1] =
          make_float4(values[4], values[5], values[6], values[7]);
    } else {
      out[v] = values[0];
    }
  }
  for (int64_t i = num_vectors * kVec + first; i < n; i += step) {
    out[i] = internal::Bf16ToFloat(in[i]);
  }
}

// The vector widths the launchers dispatch to.
template __global__ void F32ToBf16Kernel<1>(const float*, uint16_t*, int64_t);
template __global__ void F32ToBf16Kernel<kBf16PerVector>(const float*, uint16_t*, int64_t);
template __global__ void Bf16ToF32Kernel<1>(const uint16_t*, float*, int64_t);
template __global__ void Bf16ToF32Kernel<kBf16PerVector>(const uint16_t*, float*, int64_t);

absl::Status Validate(const char* name, const void* in, const void* out, int64_t n) {
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat(name, ": negative n ", n));
  if (n > 0 && (in == nullptr || out == nullptr)) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": in and out must be non-null"));
  }
  return absl::OkStatus();
}

dim3 Grid(int64_t n, bool vectorized) {
  const int64_t work = vectorized ? std::max<int64_t>(1, n / kBf16PerVector) : n;
  return dim3(static_cast<unsigned>(std::min(kMaxBlocks, (work + kThreads - 1) / kThreads)));
}

}  // namespace

absl::Status F32ToBf16(const float* in, uint16_t* out, int64_t n, void* stream) {
  RETURN_IF_ERROR(Validate("F32ToBf16", in, out, n));
  if (n == 0) return absl::OkStatus();
  const bool vectorized = internal::IsAligned16(in) && internal::IsAligned16(out);
  const cudaStream_t s = internal::AsStream(stream);
  if (vectorized) {
    F32ToBf16Kernel<kBf16PerVector><<<Grid(n, true), kThreads, 0, s>>>(in, out, n);
  } else {
    F32ToBf16Kernel<1><<<Grid(n, false), kThreads, 0, s>>>(in, out, n);
  }
  return internal::CheckLaunch("F32ToBf16Kernel");
}

absl::Status Bf16ToF32(const uint16_t* in, float* out, int64_t n, void* stream) {
  RETURN_IF_ERROR(Validate("Bf16ToF32", in, out, n));
  if (n == 0) return absl::OkStatus();
  const bool vectorized = internal::IsAligned16(in) && internal::IsAligned16(out);
  const cudaStream_t s = internal::AsStream(stream);
  if (vectorized) {
    Bf16ToF32Kernel<kBf16PerVector><<<Grid(n, true), kThreads, 0, s>>>(in, out, n);
  } else {
    Bf16ToF32Kernel<1><<<Grid(n, false), kThreads, 0, s>>>(in, out, n);
  }
  return internal::CheckLaunch("Bf16ToF32Kernel");
}

}  // namespace lserve::cuda
