#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/chained_launch.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/rope.h"

// Large positions need the accurate sincosf; --use_fast_math would turn it into __sincosf,
// whose error grows with the angle.
#ifdef __USE_FAST_MATH__
#error "kernels/cuda/rope.cu must be compiled without --use_fast_math"
#endif

namespace lserve::cuda {
namespace {

using internal::kBf16PerVector;

constexpr int kRopeMaxThreads = 256;

// Typed view of RopeParams that the kernel takes by value.
struct RopeArgs {
  uint16_t* x;
  const int32_t* positions;
  const float* inv_freq;
  int64_t num_tokens;
  int num_heads;
  int head_dim;
  int64_t token_stride;
};

// One block per token (internal::FillRopeTable, internal::RotateTokenHeads).
template <int kVec>
__global__ void RopeKernel(RopeArgs p) {
  ChainWait();
  extern __shared__ float table[];  // cos [half], then sin [half]
  const int64_t token = blockIdx.x;
  internal::FillRopeTable(static_cast<float>(p.positions[token]), p.inv_freq, p.head_dim, table);
  internal::RotateTokenHeads<kVec>(p.x + token * p.token_stride, p.num_heads, p.head_dim, table);
}

// The vector widths ApplyRope dispatches to.
template __global__ void RopeKernel<1>(RopeArgs);
template __global__ void RopeKernel<kBf16PerVector>(RopeArgs);

}  // namespace

absl::Status ApplyRope(const RopeParams& params, void* stream) {
  if (params.dtype != DType::kBF16) {
    return absl::InvalidArgumentError("cuda ApplyRope takes bf16 tensors");
  }
  RopeArgs p{static_cast<uint16_t*>(params.x),
             params.positions,
             params.inv_freq,
             params.num_tokens,
             params.num_heads,
             params.head_dim,
             params.token_stride};
  if (p.num_tokens < 0 || p.num_tokens > 0x7FFFFFFF || p.num_heads <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("ApplyRope: need 0 <= num_tokens < 2^31 and "
                     "num_heads > 0, got num_tokens=",
                     p.num_tokens, " num_heads=", p.num_heads));
  }
  if (p.head_dim <= 0 || p.head_dim % 2 != 0 || p.head_dim > kMaxRopeHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat("ApplyRope: head_dim must be even and in (0, ",
                                                   kMaxRopeHeadDim, "], got ", p.head_dim));
  }
  const int64_t row_width = static_cast<int64_t>(p.num_heads) * p.head_dim;
  if (p.token_stride == 0) p.token_stride = row_width;
  if (p.token_stride < row_width) {
    return absl::InvalidArgumentError(absl::StrCat("ApplyRope: token_stride (", p.token_stride,
                                                   ") is smaller than num_heads·head_dim ",
                                                   row_width));
  }
  if (p.num_tokens == 0) return absl::OkStatus();
  if (p.x == nullptr || p.positions == nullptr || p.inv_freq == nullptr) {
    return absl::InvalidArgumentError("ApplyRope: x, positions and inv_freq must be non-null");
  }

  // Both halves of a head start on a 16-byte boundary when D/2 is a multiple of 8.
  const int half = p.head_dim / 2;
  const bool vectorized = half % kBf16PerVector == 0 && p.token_stride % kBf16PerVector == 0 &&
                          internal::IsAligned16(p.x);
  const int work = p.num_heads * (vectorized ? half / kBf16PerVector : half);
  const int threads = std::min(kRopeMaxThreads, (std::max(work, half) + 31) / 32 * 32);
  const size_t shared_bytes = sizeof(float) * p.head_dim;
  const cudaStream_t s = internal::AsStream(stream);
  const dim3 grid(static_cast<unsigned>(p.num_tokens));
  if (vectorized) {
    LaunchChained(RopeKernel<kBf16PerVector>, grid, threads, shared_bytes, s, p);
  } else {
    LaunchChained(RopeKernel<1>, grid, threads, shared_bytes, s, p);
  }
  return internal::CheckLaunch("RopeKernel");
}

}  // namespace lserve::cuda
