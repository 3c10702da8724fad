#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#include "common/logging.h"

namespace lserve::cpu {
namespace {

// One SIMD register of floats. The widest instruction set the compiler targets is used;
// the portable fallback is written so that plain SSE code generation still vectorizes it.
#if defined(__AVX512F__)
struct Vec {
  static constexpr int kWidth = 16;
  __m512 v;
  static Vec Zero() { return {_mm512_setzero_ps()}; }
  static Vec Load(const float* p) { return {_mm512_loadu_ps(p)}; }
};
inline Vec Fma(Vec a, Vec b, Vec acc) { return {_mm512_fmadd_ps(a.v, b.v, acc.v)}; }
inline Vec Add(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
inline float ReduceSum256(__m256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
// GCC 12's 512-to-256-bit extract intrinsics (and _mm512_reduce_add_ps, built on them)
// trip -Wmaybe-uninitialized inside its own header, so the halves come from shuffles.
inline float ReduceSum(Vec a) {
  const __m256 lo = __builtin_shufflevector(a.v, a.v, 0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 hi = __builtin_shufflevector(a.v, a.v, 8, 9, 10, 11, 12, 13, 14, 15);
  return ReduceSum256(_mm256_add_ps(lo, hi));
}
#elif defined(__AVX2__) && defined(__FMA__)
struct Vec {
  static constexpr int kWidth = 8;
  __m256 v;
  static Vec Zero() { return {_mm256_setzero_ps()}; }
  static Vec Load(const float* p) { return {_mm256_loadu_ps(p)}; }
};
inline Vec Fma(Vec a, Vec b, Vec acc) { return {_mm256_fmadd_ps(a.v, b.v, acc.v)}; }
inline Vec Add(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
inline float ReduceSum(Vec a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#else
struct Vec {
  static constexpr int kWidth = 4;
  float v[kWidth];
  static Vec Zero() { return {{0.0f, 0.0f, 0.0f, 0.0f}}; }
  static Vec Load(const float* p) { return {{p[0], p[1], p[2], p[3]}}; }
};
inline Vec Fma(Vec a, Vec b, Vec acc) {
  for (int l = 0; l < Vec::kWidth; ++l) acc.v[l] += a.v[l] * b.v[l];
  return acc;
}
inline Vec Add(Vec a, Vec b) {
  for (int l = 0; l < Vec::kWidth; ++l) a.v[l] += b.v[l];
  return a;
}
inline float ReduceSum(Vec a) { return (a.v[0] + a.v[1]) + (a.v[2] + a.v[3]); }
#endif

constexpr int kW = Vec::kWidth;
#if defined(__AVX512F__)
constexpr int kVecRegs = 32;
#else
constexpr int kVecRegs = 16;
#endif

// A tile with fewer than 8 accumulators cannot hide FMA latency (4 cycles, 2 ports), so it
// unrolls k by two with a second set of accumulators.
constexpr int Unroll(int mr, int nr) { return mr * nr >= 8 ? 1 : 2; }

// Largest w-row count (≤ 4) whose mr x nr tile keeps its accumulators, the mr x operands
// and one w operand in registers (a full register file still works: the compiler folds
// the w load into the FMA's memory operand).
constexpr int FittingNr(int mr) {
  for (int nr = 4; nr > 1; --nr) {
    if (Unroll(mr, nr) * mr * nr + mr + 1 <= kVecRegs) return nr;
  }
  return 1;
}

// Batches up to kSmallM rows (decode) form one x tile, so the weight, which dominates the
// traffic, is streamed exactly once. Larger batches use kMr x kNr tiles with k blocking.
constexpr int kSmallM = 8;
constexpr int kMr = kVecRegs >= 32 ? 4 : 3;
constexpr int kNr = 4;
static_assert(FittingNr(kMr) >= kNr);

// Threads take whole blocks of w rows; 12 is a multiple of every tile width NR (1 to 4).
constexpr int64_t kRowBlock = 12;
// x rows of one k block stay in L2 while every w tile of a thread's slice passes over them.
constexpr int64_t kXBlockBytes = 1 << 20;
// Parallel chunks smaller than this spend more on waking threads than on arithmetic.
constexpr int64_t kMinChunkFlops = 1 << 16;

// out[i·NR + j] = Σ_{p<kc} x[i·ldx + p] · w[j·ldw + p]: dot products along k, so both
// operands are read contiguously from their row-major storage and neither is repacked.
// kPrefetchNext requests the next NR rows of w (which must exist) one tile ahead: with
// several FMAs per weight line the hardware prefetcher alone falls behind, and measured
// m = 8 decode over a 98 MB weight ran 2.4x slower without it.
template <int MR, int NR, bool kPrefetchNext = false>
void DotTile(const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t kc, float* out) {
  constexpr int U = Unroll(MR, NR);
  Vec acc[U][MR][NR];
  for (int u = 0; u < U; ++u)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[u][i][j] = Vec::Zero();

  int64_t p = 0;
  for (; p + U * kW <= kc; p += U * kW) {
    for (int u = 0; u < U; ++u) {
      Vec xv[MR];
      for (int i = 0; i < MR; ++i) xv[i] = Vec::Load(x + i * ldx + p + u * kW);
      for (int j = 0; j < NR; ++j) {
        if constexpr (kPrefetchNext) __builtin_prefetch(w + (j + NR) * ldw + p + u * kW);
        const Vec wv = Vec::Load(w + j * ldw + p + u * kW);
        for (int i = 0; i < MR; ++i) acc[u][i][j] = Fma(xv[i], wv, acc[u][i][j]);
      }
    }
  }
  if constexpr (U > 1) {
    for (; p + kW <= kc; p += kW) {
      Vec xv[MR];
      for (int i = 0; i < MR; ++i) xv[i] = Vec::Load(x + i * ldx + p);
      for (int j = 0; j < NR; ++j) {
        const Vec wv = Vec::Load(w + j * ldw + p);
        for (int i = 0; i < MR; ++i) acc[0][i][j] = Fma(xv[i], wv, acc[0][i][j]);
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      Vec total = acc[0][i][j];
      for (int u = 1; u < U; ++u) total = Add(total, acc[u][i][j]);
      float s = ReduceSum(total);
      for (int64_t q = p; q < kc; ++q) s += x[i * ldx + q] * w[j * ldw + q];
      out[i * NR + j] = s;
    }
  }
}

// Tiles narrower than NR (the last w rows of a slice) take this switch; full tiles call
// DotTile directly so it inlines into the loop.
template <int MR>
void DotTileNarrow(int nr, const float* x, int64_t ldx, const float* w, int64_t ldw, int64_t kc,
                   float* out) {
  switch (nr) {
    case 1:
      return DotTile<MR, 1>(x, ldx, w, ldw, kc, out);
    case 2:
      return DotTile<MR, 2>(x, ldx, w, ldw, kc, out);
    case 3:
      return DotTile<MR, 3>(x, ldx, w, ldw, kc, out);
    default:
      return DotTile<MR, 4>(x, ldx, w, ldw, kc, out);
  }
}

// Any mr x nr edge tile with mr ≤ sizeof...(Ms).
template <int... Ms>
void DotTileAny(std::integer_sequence<int, Ms...>, int mr, int nr, const float* x, int64_t ldx,
                const float* w, int64_t ldw, int64_t kc, float* out) {
  ((mr == Ms + 1 ? DotTileNarrow<Ms + 1>(nr, x, ldx, w, ldw, kc, out) : void()), ...);
}

// Writes an mr x nr tile into y: the first k block initializes (adding the bias), later
// blocks accumulate.
inline void StoreTile(const float* tile, int mr, int nr, float* y, int64_t ldy, const float* bias,
                      bool first) {
  for (int i = 0; i < mr; ++i) {
    float* yr = y + i * ldy;
    const float* tr = tile + i * nr;
    if (first) {
      for (int j = 0; j < nr; ++j) yr[j] = tr[j] + (bias ? bias[j] : 0.0f);
    } else {
      for (int j = 0; j < nr; ++j) yr[j] += tr[j];
    }
  }
}

// All MR = m rows of x against w rows [n0, n1) in one pass over k.
template <int MR>
void SmallMSlice(const float* x, int64_t k, const float* w, int64_t n0, int64_t n1,
                 const float* bias, float* y, int64_t ldy) {
  constexpr int NR = FittingNr(MR);
  for (int64_t j = n0; j < n1; j += NR) {
    const int nr = static_cast<int>(std::min<int64_t>(NR, n1 - j));
    float tile[MR * NR];
    if (j + 2 * NR <= n1) {
      DotTile<MR, NR, /*kPrefetchNext=*/true>(x, k, w + j * k, k, k, tile);
    } else if (nr == NR) {
      DotTile<MR, NR>(x, k, w + j * k, k, k, tile);
    } else {
      DotTileNarrow<MR>(nr, x, k, w + j * k, k, k, tile);
    }
    StoreTile(tile, MR, nr, y + j, ldy, bias ? bias + j : nullptr, /*first=*/true);
  }
}

template <int... Ms>
void SmallMSliceFor(std::integer_sequence<int, Ms...>, int64_t m, const float* x, int64_t k,
                    const float* w, int64_t n0, int64_t n1, const float* bias, float* y,
                    int64_t ldy) {
  static_assert(sizeof...(Ms) == kSmallM);
  ((m == Ms + 1 ? SmallMSlice<Ms + 1>(x, k, w, n0, n1, bias, y, ldy) : void()), ...);
}

// x tiles of up to kMr rows against w rows [n0, n1): for each k block, each group of kNr
// w rows (in L1/L2) is reused across every x tile, whose k block slab stays in L2.
void BlockedSlice(const float* x, int64_t m, int64_t k, const float* w, int64_t n0, int64_t n1,
                  const float* bias, float* y, int64_t ldy, int64_t kc_max) {
  for (int64_t k0 = 0; k0 < k; k0 += kc_max) {
    const int64_t kc = std::min(kc_max, k - k0);
    const bool first = k0 == 0;
    for (int64_t j = n0; j < n1; j += kNr) {
      const int nr = static_cast<int>(std::min<int64_t>(kNr, n1 - j));
      const float* wj = w + j * k + k0;
      const float* bj = bias ? bias + j : nullptr;
      for (int64_t i = 0; i < m; i += kMr) {
        const int mr = static_cast<int>(std::min<int64_t>(kMr, m - i));
        const float* xi = x + i * k + k0;
        float tile[kMr * kNr];
        if (mr == kMr && nr == kNr) {
          DotTile<kMr, kNr>(xi, k, wj, k, kc, tile);
        } else {
          DotTileAny(std::make_integer_sequence<int, kMr>(), mr, nr, xi, k, wj, k, kc, tile);
        }
        StoreTile(tile, mr, nr, y + i * ldy + j, ldy, bj, first);
      }
    }
  }
}

}  // namespace

void Linear(const float* x, int64_t m, int64_t k, const float* w, int64_t n, const float* bias,
            float* y, ThreadPool* pool) {
  CHECK_GE(m, 0);
  CHECK_GE(k, 0);
  CHECK_GE(n, 0);
  if (m == 0 || n == 0) return;
  if (k == 0) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) y[i * n + j] = bias ? bias[j] : 0.0f;
    return;
  }
  // The k block is sized so that the m x kc slab of x stays in L2 across a thread's slice.
  int64_t kc = std::max<int64_t>(256, kXBlockBytes / (m * static_cast<int64_t>(sizeof(float))));
  kc = std::min(k, kc / kW * kW);
  // Threads split w into contiguous row ranges, so each streams its own slice of the
  // weight once (per k block).
  const int64_t blocks = (n + kRowBlock - 1) / kRowBlock;
  const int64_t grain = std::max<int64_t>(1, kMinChunkFlops / (2 * m * k * kRowBlock));
  ParallelFor(pool, blocks, grain, [&](int64_t b0, int64_t b1) {
    const int64_t n0 = b0 * kRowBlock;
    const int64_t n1 = std::min(n, b1 * kRowBlock);
    if (m <= kSmallM) {
      SmallMSliceFor(std::make_integer_sequence<int, kSmallM>(), m, x, k, w, n0, n1, bias, y, n);
    } else {
      BlockedSlice(x, m, k, w, n0, n1, bias, y, n, kc);
    }
  });
}

void LinearReference(const float* x, int64_t m, int64_t k, const float* w, int64_t n,
                     const float* bias, float* y) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      double s = bias ? bias[j] : 0.0;
      for (int64_t p = 0; p < k; ++p) s += static_cast<double>(x[i * k + p]) * w[j * k + p];
      y[i * n + j] = static_cast<float>(s);
    }
  }
}

absl::Status Gemm(const GemmParams& p, ThreadPool* pool) {
  if (p.dtype != DType::kF32 || p.out_dtype != DType::kF32) {
    return absl::InvalidArgumentError("cpu GEMM computes in float32 only");
  }
  if (p.m < 0 || p.n <= 0 || p.k <= 0) return absl::InvalidArgumentError("GEMM: bad shape");
  if (p.m == 0) return absl::OkStatus();
  Linear(static_cast<const float*>(p.x), p.m, p.k, static_cast<const float*>(p.w), p.n,
         static_cast<const float*>(p.bias), static_cast<float*>(p.y), pool);
  return absl::OkStatus();
}

}  // namespace lserve::cpu
