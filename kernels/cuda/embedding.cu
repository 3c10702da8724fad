#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/chained_launch.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/embedding.h"

namespace lserve::cuda {
namespace {

// One block per row; kVec bf16 values per access.
template <int kVec>
__global__ void EmbeddingKernel(const uint16_t* table, const int32_t* ids, uint16_t* out,
                                int64_t dim, int64_t table_rows) {
  ChainWait();
  const int64_t row = blockIdx.x;
  const int32_t id = ids[row];
  const bool valid = id >= 0 && id < table_rows;
  const uint16_t* src = table + (valid ? int64_t{id} * dim : 0);
  uint16_t* dst = out + row * dim;
  for (int64_t i = threadIdx.x * kVec; i < dim; i += int64_t{blockDim.x} * kVec) {
    if constexpr (kVec == 8) {
      const uint4 value = valid ? *reinterpret_cast<const uint4*>(src + i) : make_uint4(0, 0, 0, 0);
      *reinterpret_cast<uint4*>(dst + i) = value;
    } else {
      dst[i] = valid ? src[i] : 0;
    }
  }
}

}  // namespace

absl::Status Embedding(const EmbeddingParams& p, void* stream) {
  if (p.dtype != DType::kBF16) return absl::InvalidArgumentError("cuda embedding takes bf16");
  if (p.rows < 0 || p.dim <= 0 || p.table_rows <= 0 || p.rows > 0x7FFFFFFF) {
    return absl::InvalidArgumentError(absl::StrCat("cuda embedding: bad shape rows=", p.rows,
                                                   " dim=", p.dim, " table_rows=", p.table_rows));
  }
  if (p.rows == 0) return absl::OkStatus();
  const auto* table = static_cast<const uint16_t*>(p.table);
  auto* out = static_cast<uint16_t*>(p.out);
  const cudaStream_t s = internal::AsStream(stream);
  if (p.dim % 8 == 0 && internal::IsAligned16(table) && internal::IsAligned16(out)) {
    const int threads = static_cast<int>(std::clamp<int64_t>((p.dim / 8 + 31) / 32 * 32, 32, 256));
    LaunchChained(EmbeddingKernel<8>, static_cast<unsigned>(p.rows), threads, 0, s, table, p.ids,
                  out, p.dim, p.table_rows);
  } else {
    LaunchChained(EmbeddingKernel<1>, static_cast<unsigned>(p.rows), 256, 0, s, table, p.ids, out,
                  p.dim, p.table_rows);
  }
  return internal::CheckLaunch("EmbeddingKernel");
}

}  // namespace lserve::cuda
