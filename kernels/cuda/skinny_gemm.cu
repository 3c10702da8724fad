// GEMMs of a few rows (decode steps): y = x . w^T (+ bias), bandwidth-bound on w.
#include <cuda_runtime.h>

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemm.h"

namespace lserve::cuda {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kWRowsPerWarp = 2;  // each x chunk loaded serves two rows of w
constexpr int kUnroll = 4;        // 16-byte chunks of each w row in flight per lane

struct SkinnyArgs {
  const uint16_t* x;
  const uint16_t* w;
  const uint16_t* bias;
  void* y;
  int m;
  int64_t n;
  int64_t k;
};

__device__ __forceinline__ void Unpack(const uint4& packed, float* out) {
  const uint32_t words[4] = {packed.x, packed.y, packed.z, packed.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    out[2 * i] = __uint_as_float(words[i] << 16);
    out[2 * i + 1] = __uint_as_float(words[i] & 0xFFFF0000u);
  }
}

// One warp per two rows of w, for every row of x (at most kMaxM). Lanes stride the row in
// 16-byte chunks with kUnroll chunks of both w rows loaded before any math (w streamed
// past L1; x, small and read by every warp, through the read-only cache). Each lane holds
// partial sums that one butterfly reduction combines at the end.
template <int kMaxM, bool kF32Out>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) SkinnyGemmKernel(SkinnyArgs a) {
  const int lane = threadIdx.x % 32;
  const int64_t n0 = (int64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32) * kWRowsPerWarp;
  if (n0 >= a.n) return;
  const bool second = n0 + 1 < a.n;
  const int64_t chunks = a.k / 8;
  const uint4* w0 = reinterpret_cast<const uint4*>(a.w + n0 * a.k);
  const uint4* w1 = second ? w0 + chunks : w0;
  float acc[kMaxM][kWRowsPerWarp] = {};
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
    uint4 wa[kUnroll], wb[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + u * 32;
      wa[u] = c < chunks ? __ldcs(w0 + c) : make_uint4(0, 0, 0, 0);
      wb[u] = c < chunks ? __ldcs(w1 + c) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + u * 32;
      if (c >= chunks) break;
      float fa[8], fb[8];
      Unpack(wa[u], fa);
      Unpack(wb[u], fb);
#pragma unroll
      for (int r = 0; r < kMaxM; ++r) {
        if (r >= a.m) break;
        float fx[8];
        Unpack(__ldg(reinterpret_cast<const uint4*>(a.x + r * a.k) + c), fx);
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          acc[r][0] = fmaf(fx[i], fa[i], acc[r][0]);
          acc[r][1] = fmaf(fx[i], fb[i], acc[r][1]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kMaxM; ++r) {
#pragma unroll
    for (int j = 0; j < kWRowsPerWarp; ++j) {
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) {
        acc[r][j] += __shfl_xor_sync(0xFFFFFFFFu, acc[r][j], offset);
      }
    }
  }
  if (lane != 0) return;
  for (int r = 0; r < a.m && r < kMaxM; ++r) {
    for (int j = 0; j < kWRowsPerWarp && n0 + j < a.n; ++j) {
      float value = acc[r][j];
      if (a.bias != nullptr) value += internal::Bf16ToFloat(a.bias[n0 + j]);
      if constexpr (kF32Out) {
        static_cast<float*>(a.y)[r * a.n + n0 + j] = value;
      } else {
        static_cast<uint16_t*>(a.y)[r * a.n + n0 + j] = internal::FloatToBf16(value);
      }
    }
  }
}

template <int kMaxM>
void Launch(const SkinnyArgs& args, bool f32_out, cudaStream_t stream) {
  const int64_t warps = (args.n + kWRowsPerWarp - 1) / kWRowsPerWarp;
  const dim3 grid(static_cast<unsigned>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock));
  if (f32_out) {
    SkinnyGemmKernel<kMaxM, true><<<grid, kWarpsPerBlock * 32, 0, stream>>>(args);
  } else {
    SkinnyGemmKernel<kMaxM, false><<<grid, kWarpsPerBlock * 32, 0, stream>>>(args);
  }
}

}  // namespace

bool SkinnyGemmSupported(const GemmParams& p) {
  return p.dtype == DType::kBF16 && (p.out_dtype == DType::kBF16 || p.out_dtype == DType::kF32) &&
         p.m >= 1 && p.m <= kSkinnyGemmMaxRows && p.n >= 1 && p.k >= 8 && p.k % 8 == 0 &&
         internal::IsAligned16(p.x) && internal::IsAligned16(p.w);
}

absl::Status SkinnyGemm(const GemmParams& p, void* stream) {
  if (!SkinnyGemmSupported(p)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "skinny GEMM: needs bf16 x/w, 1 <= m <= ", kSkinnyGemmMaxRows,
        ", k a multiple of 8 and 16-byte aligned x and w; got m=", p.m, " n=", p.n, " k=", p.k));
  }
  const SkinnyArgs args{static_cast<const uint16_t*>(p.x),
                        static_cast<const uint16_t*>(p.w),
                        static_cast<const uint16_t*>(p.bias),
                        p.y,
                        static_cast<int>(p.m),
                        p.n,
                        p.k};
  const bool f32_out = p.out_dtype == DType::kF32;
  const cudaStream_t s = internal::AsStream(stream);
  if (p.m == 1) {
    Launch<1>(args, f32_out, s);
  } else if (p.m == 2) {
    Launch<2>(args, f32_out, s);
  } else if (p.m <= 4) {
    Launch<4>(args, f32_out, s);
  } else {
    Launch<8>(args, f32_out, s);
  }
  return internal::CheckLaunch("SkinnyGemmKernel");
}

}  // namespace lserve::cuda
