// GEMMs of a few rows (decode steps): y = x . w^T (+ bias), bandwidth-bound on w.
#include <cuda_runtime.h>

#include <cstdint>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/chained_launch.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemm.h"
#include "kernels/cuda/skinny_gemm_args.h"

namespace lserve::cuda {
namespace {

using internal::SkinnyArgs;

constexpr int kWarpsPerBlock = 4;

// The shapes the runner times: rows of w per warp (each x chunk loaded serves them all) and
// 16-byte chunks of each row in flight per lane.
struct Variant {
  int w_rows;
  int unroll;
};
constexpr Variant kVariants[] = {{2, 4}, {2, 8}, {4, 4}, {1, 8}};

// One warp per kWRows rows of w, for every row of x (at most kMaxM). Lanes stride the rows
// in 16-byte chunks, kUnroll chunks of each row loaded before any math (w streamed past
// L1; x, small and read by every warp, through the read-only cache). Each lane keeps
// partial sums that one butterfly reduction combines at the end. With kSiluMul, w holds
// 2n rows (gate, then up) and a warp's rows are kWRows / 2 gate rows and the matching up
// rows, which its epilogue combines into n columns of silu(gate) * up.
template <int kMaxM, int kWRows, int kUnroll, bool kF32Out, bool kSiluMul = false>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) SkinnyGemmKernel(SkinnyArgs a) {
  static_assert(!kSiluMul || (kWRows % 2 == 0 && !kF32Out));
  constexpr int kOutRows = kSiluMul ? kWRows / 2 : kWRows;  // output columns per warp
  const int lane = threadIdx.x % 32;
  const int64_t n0 = (int64_t{blockIdx.x} * kWarpsPerBlock + threadIdx.x / 32) * kOutRows;
  const int64_t chunks = a.k / 8;
  const uint4* w[kWRows];
#pragma unroll
  for (int j = 0; j < kWRows; ++j) {
    // Rows past n re-read the last row; their sums are never stored.
    const int64_t row = min(n0 + j % kOutRows, a.n - 1) + (j < kOutRows ? 0 : a.n);
    w[j] = reinterpret_cast<const uint4*>(a.w) + row * chunks;
  }
  uint4 wv[kWRows][kUnroll];
  auto load_weights = [&](int64_t c0) {
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + u * 32;
#pragma unroll
      for (int j = 0; j < kWRows; ++j) wv[j][u] = c < chunks ? __ldcs(w[j] + c) : uint4{};
    }
  };
  // The weights are no earlier kernel's output: a chained launch fetches its first ones
  // before waiting for the previous kernel, so the stream starts during that kernel's end.
  if (n0 < a.n) load_weights(lane);
  ChainWait();
  if (n0 >= a.n) return;
  float acc[kMaxM][kWRows] = {};
  for (int64_t c0 = lane; c0 < chunks; c0 += 32 * kUnroll) {
    if (c0 != lane) load_weights(c0);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t c = c0 + u * 32;
      if (c >= chunks) break;
      float fw[kWRows][8];
#pragma unroll
      for (int j = 0; j < kWRows; ++j) internal::UnpackBf16x8(wv[j][u], fw[j]);
#pragma unroll
      for (int r = 0; r < kMaxM; ++r) {
        if (r >= a.m) break;
        float fx[8];
        internal::UnpackBf16x8(__ldg(reinterpret_cast<const uint4*>(a.x + r * a.k) + c), fx);
#pragma unroll
        for (int j = 0; j < kWRows; ++j) {
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[r][j] = fmaf(fx[i], fw[j][i], acc[r][j]);
        }
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kMaxM; ++r) {
#pragma unroll
    for (int j = 0; j < kWRows; ++j) {
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) {
        acc[r][j] += __shfl_xor_sync(0xFFFFFFFFu, acc[r][j], offset);
      }
    }
  }
  if (lane != 0) return;
  if constexpr (kSiluMul) {
#pragma unroll
    for (int r = 0; r < kMaxM; ++r) {
      if (r >= a.m) break;
#pragma unroll
      for (int j = 0; j < kOutRows; ++j) {
        if (n0 + j >= a.n) break;
        using internal::Bf16ToFloat;
        using internal::FloatToBf16;
        const float gate = Bf16ToFloat(FloatToBf16(acc[r][j]));
        const float up = Bf16ToFloat(FloatToBf16(acc[r][j + kOutRows]));
        static_cast<uint16_t*>(a.y)[r * a.n + n0 + j] = FloatToBf16(internal::Silu(gate) * up);
      }
    }
  } else {
#pragma unroll
    for (int r = 0; r < kMaxM; ++r) {
      if (r >= a.m) break;
#pragma unroll
      for (int j = 0; j < kWRows; ++j) {
        if (n0 + j >= a.n) break;
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
}

template <int kMaxM, int kWRows, int kUnroll>
void LaunchSiluMul(const SkinnyArgs& args, cudaStream_t stream) {
  // Pairs of rows per warp: at least one gate row and its up row.
  constexpr int kRows = kWRows < 2 ? 2 : kWRows;
  const int64_t warps = (args.n + kRows / 2 - 1) / (kRows / 2);
  const dim3 grid(static_cast<unsigned>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock));
  LaunchChained(SkinnyGemmKernel<kMaxM, kRows, kUnroll, false, true>, grid, kWarpsPerBlock * 32, 0,
                stream, args);
}

template <int kMaxM, int kWRows, int kUnroll>
void Launch(const SkinnyArgs& args, bool f32_out, bool silu_mul, cudaStream_t stream) {
  if (silu_mul) return LaunchSiluMul<kMaxM, kWRows, kUnroll>(args, stream);
  const int64_t warps = (args.n + kWRows - 1) / kWRows;
  const dim3 grid(static_cast<unsigned>((warps + kWarpsPerBlock - 1) / kWarpsPerBlock));
  if (f32_out) {
    LaunchChained(SkinnyGemmKernel<kMaxM, kWRows, kUnroll, true>, grid, kWarpsPerBlock * 32, 0,
                  stream, args);
  } else {
    LaunchChained(SkinnyGemmKernel<kMaxM, kWRows, kUnroll, false>, grid, kWarpsPerBlock * 32, 0,
                  stream, args);
  }
}

template <int kWRows, int kUnroll>
void LaunchForRows(const SkinnyArgs& args, bool f32_out, bool silu_mul, cudaStream_t stream) {
  if (args.m == 1) {
    Launch<1, kWRows, kUnroll>(args, f32_out, silu_mul, stream);
  } else if (args.m == 2) {
    Launch<2, kWRows, kUnroll>(args, f32_out, silu_mul, stream);
  } else if (args.m <= 4) {
    Launch<4, kWRows, kUnroll>(args, f32_out, silu_mul, stream);
  } else {
    Launch<8, kWRows, kUnroll>(args, f32_out, silu_mul, stream);
  }
}

// Launches `variant` of the kernel family (for silu_mul, args.n counts output columns).
absl::Status LaunchVariant(const SkinnyArgs& args, bool f32_out, bool silu_mul, int variant,
                           cudaStream_t s) {
  if (variant < 0 || variant >= SkinnyGemmVariants()) {
    return absl::InvalidArgumentError(absl::StrCat("skinny GEMM: no variant ", variant));
  }
  if (variant == static_cast<int>(std::size(kVariants))) {
    return internal::LaunchSkinnyGemmBulk(args, f32_out, silu_mul, s);
  }
  switch (variant) {
    case 0:
      LaunchForRows<kVariants[0].w_rows, kVariants[0].unroll>(args, f32_out, silu_mul, s);
      break;
    case 1:
      LaunchForRows<kVariants[1].w_rows, kVariants[1].unroll>(args, f32_out, silu_mul, s);
      break;
    case 2:
      LaunchForRows<kVariants[2].w_rows, kVariants[2].unroll>(args, f32_out, silu_mul, s);
      break;
    default:
      LaunchForRows<kVariants[3].w_rows, kVariants[3].unroll>(args, f32_out, silu_mul, s);
      break;
  }
  return internal::CheckLaunch("SkinnyGemmKernel");
}

}  // namespace

bool SkinnyGemmSupported(const GemmParams& p) {
  return p.dtype == DType::kBF16 && (p.out_dtype == DType::kBF16 || p.out_dtype == DType::kF32) &&
         p.m >= 1 && p.m <= kSkinnyGemmMaxRows && p.n >= 1 && p.k >= 8 && p.k % 8 == 0 &&
         internal::IsAligned16(p.x) && internal::IsAligned16(p.w);
}

// The register-loading variants, then on sm_90 the bulk-copy one.
int SkinnyGemmVariants() {
  static const bool bulk = internal::SkinnyGemmBulkAvailable();
  return static_cast<int>(std::size(kVariants)) + (bulk ? 1 : 0);
}

absl::Status SkinnyGemm(const GemmParams& p, void* stream, int variant) {
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
  return LaunchVariant(args, p.out_dtype == DType::kF32, false, variant,
                       internal::AsStream(stream));
}

absl::Status SkinnyGemmSiluMul(const GemmSiluMulParams& p, void* stream, int variant) {
  if (!SkinnyGemmSupported(GatedProduct(p)) || p.y == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "skinny GEMM + SiLU: needs bf16 x/w, 1 <= m <= ", kSkinnyGemmMaxRows,
        ", k a multiple of 8 and 16-byte aligned x and w; got m=", p.m, " n=", p.n, " k=", p.k));
  }
  const SkinnyArgs args{static_cast<const uint16_t*>(p.x),
                        static_cast<const uint16_t*>(p.w),
                        nullptr,
                        p.y,
                        static_cast<int>(p.m),
                        p.n,
                        p.k};
  return LaunchVariant(args, false, true, variant, internal::AsStream(stream));
}

}  // namespace lserve::cuda
