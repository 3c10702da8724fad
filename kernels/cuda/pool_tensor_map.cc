#include "kernels/cuda/pool_tensor_map.h"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"

namespace lserve::cuda::internal {
namespace {

// The driver's encoder, found through the runtime so nothing links libcuda directly.
PFN_cuTensorMapEncodeTiled_v12000 Encoder() {
  static const PFN_cuTensorMapEncodeTiled_v12000 encoder = [] {
    void* function = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &function, 12000,
                                         cudaEnableDefault, &found) != cudaSuccess ||
        found != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      function = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(function);
  }();
  return encoder;
}

}  // namespace

absl::StatusOr<CUtensorMap> EncodePoolTensorMap(const KvPoolView& pool, int head_dim,
                                                int box_rows) {
  const auto encode = Encoder();
  if (encode == nullptr) {
    return absl::UnavailableError("cuTensorMapEncodeTiled is not available from the driver");
  }
  if (head_dim % 64 != 0 || pool.page_stride % head_dim != 0 || box_rows <= 0 || box_rows > 256 ||
      reinterpret_cast<uintptr_t>(pool.base) % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("pool tensor map: head_dim ", head_dim,
                                                   ", page stride ", pool.page_stride,
                                                   " elements, box rows ", box_rows));
  }
  constexpr uint64_t kElementBytes = 2;
  const cuuint64_t dims[3] = {static_cast<cuuint64_t>(head_dim),
                              static_cast<cuuint64_t>(pool.page_stride / head_dim),
                              static_cast<cuuint64_t>(std::numeric_limits<int32_t>::max())};
  const cuuint64_t strides[2] = {head_dim * kElementBytes, pool.page_stride * kElementBytes};
  const cuuint32_t box[3] = {64, static_cast<cuuint32_t>(box_rows), 1};
  const cuuint32_t element_strides[3] = {1, 1, 1};
  CUtensorMap map{};
  const CUresult result =
      encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 3, pool.base, dims, strides, box,
             element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
             CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (result != CUDA_SUCCESS) {
    return absl::InternalError(absl::StrCat("cuTensorMapEncodeTiled failed: error ", result));
  }
  return map;
}

}  // namespace lserve::cuda::internal
