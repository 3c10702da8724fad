// bf16 GEMMs of the CUDA backend through cuBLASLt: y[m][n] = x[m][k] . w[n][k]^T + bias[n]
// (a Hugging Face Linear), float32 accumulation, y in bf16 or float32 (logits). Per shape,
// cuBLASLt's heuristic proposes up to eight algorithms; for shapes of up to 64 rows
// (decode steps) the first call times them, and the few-row SkinnyGemm below, on its own
// operands and caches the fastest. Timing can pick differently from run to run, so the
// last bits of a result may differ between processes; LSERVE_GEMM_TUNE=0 keeps the
// heuristic's first choice (as larger shapes always do) for bitwise-reproducible runs.
// The bias is added in the GEMM's epilogue when y is bf16, by a small kernel otherwise.
// No CUDA types here; streams travel as `void*`.
#ifndef LSERVE_KERNELS_CUDA_GEMM_H_
#define LSERVE_KERNELS_CUDA_GEMM_H_

#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/layer_params.h"

namespace lserve::cuda {

class GemmRunner {
 public:
  static absl::StatusOr<std::unique_ptr<GemmRunner>> Create();
  virtual ~GemmRunner() = default;
  // x, w and bias bf16 (params.dtype), y params.out_dtype (bf16 or float32); device
  // pointers, rows packed.
  virtual absl::Status Run(const GemmParams& params, void* stream) = 0;
  // The gated activation (bf16): the fused few-row kernel where the tuned plan of the
  // x . w^T product picks the few-row GEMM, else that product into params.scratch and
  // SiluMul; the two give equal bits.
  virtual absl::Status RunSiluMul(const GemmSiluMulParams& params, void* stream) = 0;
};

// GEMMs of at most kSkinnyGemmMaxRows rows (decode steps), where the work is streaming w
// once: one warp per one to four rows of w, 16-byte loads kept in flight, x from cache.
// Needs bf16 x and w, k a multiple of 8 and 16-byte aligned x and w (SkinnyGemmSupported);
// y bf16 or float32, bias added. Variants 0 .. SkinnyGemmVariants() - 1 differ in rows of
// w per warp and loads in flight; on sm_90 the last one streams w by bulk copies through
// shared memory instead (skinny_gemm_bulk.cu). GemmRunner times each beside cuBLASLt's
// candidates.
inline constexpr int64_t kSkinnyGemmMaxRows = 8;
bool SkinnyGemmSupported(const GemmParams& params);
int SkinnyGemmVariants();
absl::Status SkinnyGemm(const GemmParams& params, void* stream, int variant = 0);
// The gated activation in one pass over w: each warp computes matching gate and up rows,
// rounds both to bf16 as SkinnyGemm would store them, and writes silu(gate) * up. Needs
// what SkinnyGemm needs of x . w^T ([m][2n]); equal bitwise to SkinnyGemm (any variant)
// followed by SiluMul.
absl::Status SkinnyGemmSiluMul(const GemmSiluMulParams& params, void* stream, int variant = 0);

// y[r][c] += bias[c] for float32 y and bf16 bias (rows x cols, packed).
absl::Status AddBiasF32(float* y, const void* bias, int64_t rows, int64_t cols, void* stream);

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_GEMM_H_
