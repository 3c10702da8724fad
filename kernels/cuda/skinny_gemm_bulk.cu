// Few-row GEMMs of decode steps on Hopper with w streamed by bulk copies. A decode step's
// GEMMs are bound by reading w; the register-loading kernels (skinny_gemm.cu) keep too
// few bytes in flight per SM on the 34-50 MB shapes to hold HBM's rate from launch to tail.
// Here one persistent block per SM owns tiles of kTileRows rows of w (with SiLU: two gate
// rows and their up rows). A producer lane copies each tile in chunks of kChunkColumns
// columns, one bulk copy per row and chunk, into a ring of kStages stages (128 KB in
// flight per SM) that complete on mbarriers. Eight consumer warps reduce each stage: lane l
// of warp w takes the 8 columns at (32 w + l) * 8 of every row, the same columns of every
// x row, and keeps one partial sum per (x row, tile row) over the chunks. A butterfly then
// sums each warp's lanes, and the warps are summed in order. A row's sum does not depend on
// its place in the tile, so the fused gate/up product gives the plain product's bits.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/chained_launch.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/skinny_gemm_args.h"
#include "kernels/cuda/wgmma_sm90.cuh"

namespace lserve::cuda::internal {
namespace {

constexpr int kTileRows = 4;
constexpr int kChunkColumns = 2048;
constexpr int kStages = 8;
constexpr int kConsumerWarps = 8;
constexpr int kConsumerThreads = kConsumerWarps * 32;
constexpr int kBulkThreads = kConsumerThreads + 32;  // and one producer warp
static_assert(kConsumerThreads * 8 == kChunkColumns, "a lane reduces 8 columns of a chunk");

template <int kMaxM>
struct BulkShared {
  alignas(128) uint16_t stages[kStages][kTileRows][kChunkColumns];
  float partial[2][kConsumerWarps][kMaxM * kTileRows];  // by tile parity
  uint64_t full[kStages];
  uint64_t empty[kStages];
};

// Output columns of a tile: its rows, or with SiLU the gate/up pairs.
template <bool kSiluMul>
constexpr int kOutputsPerTile = kSiluMul ? kTileRows / 2 : kTileRows;

// The row of w that tile position j reads (rows past the end re-read the last one; their
// sums are never stored).
template <bool kSiluMul>
__device__ __forceinline__ int64_t TileRow(const SkinnyArgs& a, int64_t tile, int j) {
  if constexpr (!kSiluMul) return min(tile * kTileRows + j, a.n - 1);
  const int64_t out = min(tile * kOutputsPerTile<true> + j % kOutputsPerTile<true>, a.n - 1);
  return j < kOutputsPerTile<true> ? out : a.n + out;
}

template <int kMaxM, bool kF32Out, bool kSiluMul>
__global__ void __launch_bounds__(kBulkThreads, 1) SkinnyGemmBulkKernel(SkinnyArgs a) {
#ifdef LSERVE_SM90A_DEVICE
  using namespace sm90;
  extern __shared__ __align__(128) uint8_t shared_raw[];
  auto& s = *reinterpret_cast<BulkShared<kMaxM>*>(shared_raw);
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  constexpr int kOutputs = kOutputsPerTile<kSiluMul>;
  const int64_t tiles = (a.n + kOutputs - 1) / kOutputs;
  const int chunks = static_cast<int>((a.k + kChunkColumns - 1) / kChunkColumns);
  if (threadIdx.x == 0) {
    for (int i = 0; i < kStages; ++i) {
      BarrierInit(&s.full[i], 1);
      BarrierInit(&s.empty[i], kConsumerWarps);
    }
    BarrierInitFence();
  }
  __syncthreads();
  if (warp == kConsumerWarps) {
    // The producer: w is no earlier kernel's output, so its copies start before the wait
    // for the previous kernel.
    if (lane != 0) return;
    int64_t item = 0;
    for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
      for (int c = 0; c < chunks; ++c, ++item) {
        const int stage = static_cast<int>(item % kStages);
        const int64_t round = item / kStages;
        if (round > 0) BarrierWait(&s.empty[stage], static_cast<uint32_t>((round - 1) & 1));
        const int64_t c0 = int64_t{c} * kChunkColumns;
        const uint32_t bytes = static_cast<uint32_t>(min(int64_t{kChunkColumns}, a.k - c0) * 2);
        BarrierArriveExpectTx(&s.full[stage], bytes * kTileRows);
        for (int j = 0; j < kTileRows; ++j) {
          BulkCopyToShared(Smem(&s.stages[stage][j][0]),
                           a.w + TileRow<kSiluMul>(a, tile, j) * a.k + c0, bytes, &s.full[stage]);
        }
      }
    }
    return;
  }
  ChainWait();
  const int column = threadIdx.x * 8;  // within a chunk
  int64_t item = 0;
  int parity = 0;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x, parity ^= 1) {
    float acc[kMaxM][kTileRows] = {};
    for (int c = 0; c < chunks; ++c, ++item) {
      const int stage = static_cast<int>(item % kStages);
      BarrierWait(&s.full[stage], static_cast<uint32_t>((item / kStages) & 1));
      const int64_t col = int64_t{c} * kChunkColumns + column;
      if (col < a.k) {
        float fw[kTileRows][8];
#pragma unroll
        for (int j = 0; j < kTileRows; ++j) {
          UnpackBf16x8(*reinterpret_cast<const uint4*>(&s.stages[stage][j][column]), fw[j]);
        }
#pragma unroll
        for (int r = 0; r < kMaxM; ++r) {
          if (r >= a.m) break;
          float fx[8];
          UnpackBf16x8(__ldg(reinterpret_cast<const uint4*>(a.x + r * a.k + col)), fx);
#pragma unroll
          for (int j = 0; j < kTileRows; ++j) {
#pragma unroll
            for (int i = 0; i < 8; ++i) acc[r][j] = fmaf(fx[i], fw[j][i], acc[r][j]);
          }
        }
      }
      __syncwarp();
      if (lane == 0) BarrierArrive(&s.empty[stage]);
    }
#pragma unroll
    for (int r = 0; r < kMaxM; ++r) {
#pragma unroll
      for (int j = 0; j < kTileRows; ++j) {
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) {
          acc[r][j] += __shfl_xor_sync(0xFFFFFFFFu, acc[r][j], offset);
        }
        if (lane == 0) s.partial[parity][warp][r * kTileRows + j] = acc[r][j];
      }
    }
    // Tile t's partials are read before any consumer passes tile t + 1's barrier, which
    // comes before tile t + 2 writes the same buffer.
    NamedBarrier(1, kConsumerThreads);
    const int t = threadIdx.x;
    if (t >= a.m * kOutputs) continue;
    const int r = t / kOutputs;
    const int j = t % kOutputs;
    const int64_t out = tile * kOutputs + j;
    if (out >= a.n) continue;
    auto sum_of = [&](int row) {
      float sum = 0.0f;
      for (int w = 0; w < kConsumerWarps; ++w) sum += s.partial[parity][w][r * kTileRows + row];
      return sum;
    };
    if constexpr (kSiluMul) {
      const float gate = Bf16ToFloat(FloatToBf16(sum_of(j)));
      const float up = Bf16ToFloat(FloatToBf16(sum_of(j + kOutputs)));
      static_cast<uint16_t*>(a.y)[r * a.n + out] = FloatToBf16(Silu(gate) * up);
    } else {
      float value = sum_of(j);
      if (a.bias != nullptr) value += Bf16ToFloat(a.bias[out]);
      if constexpr (kF32Out) {
        static_cast<float*>(a.y)[r * a.n + out] = value;
      } else {
        static_cast<uint16_t*>(a.y)[r * a.n + out] = FloatToBf16(value);
      }
    }
  }
#else
  __trap();  // built for sm_90a only; the launcher checks the device first
#endif
}

template <int kMaxM, bool kF32Out, bool kSiluMul>
absl::Status Launch(const SkinnyArgs& a, cudaStream_t stream) {
  constexpr auto kernel = SkinnyGemmBulkKernel<kMaxM, kF32Out, kSiluMul>;
  constexpr int kSharedBytes = sizeof(BulkShared<kMaxM>);
  static const cudaError_t configured =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes);
  if (configured != cudaSuccess) return CudaStatus(configured, "configuring SkinnyGemmBulkKernel");
  const int sms = CurrentDeviceMultiprocessors();
  const int64_t tiles = (a.n + kOutputsPerTile<kSiluMul> - 1) / kOutputsPerTile<kSiluMul>;
  const unsigned grid = static_cast<unsigned>(std::clamp<int64_t>(tiles, 1, sms));
  LaunchChained(kernel, dim3(grid), dim3(kBulkThreads), kSharedBytes, stream, a);
  return CheckLaunch("SkinnyGemmBulkKernel");
}

template <int kMaxM>
absl::Status LaunchForKind(const SkinnyArgs& a, bool f32_out, bool silu_mul, cudaStream_t s) {
  if (silu_mul) return Launch<kMaxM, false, true>(a, s);
  return f32_out ? Launch<kMaxM, true, false>(a, s) : Launch<kMaxM, false, false>(a, s);
}

}  // namespace

bool SkinnyGemmBulkAvailable() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return IsSm90Device(device);
}

absl::Status LaunchSkinnyGemmBulk(const SkinnyArgs& args, bool f32_out, bool silu_mul,
                                  cudaStream_t stream) {
  if (args.m <= 1) return LaunchForKind<1>(args, f32_out, silu_mul, stream);
  if (args.m <= 2) return LaunchForKind<2>(args, f32_out, silu_mul, stream);
  if (args.m <= 4) return LaunchForKind<4>(args, f32_out, silu_mul, stream);
  return LaunchForKind<8>(args, f32_out, silu_mul, stream);
}

}  // namespace lserve::cuda::internal
