// Internal to kernels/cuda: TMA tensor maps over a paged KV pool (kvstore/kv_pool.h's
// layout), so that one elected thread copies a page's K or V rows of one head into shared
// memory with a single bulk tensor copy, swizzled for wgmma.
#ifndef LSERVE_KERNELS_CUDA_POOL_TENSOR_MAP_H_
#define LSERVE_KERNELS_CUDA_POOL_TENSOR_MAP_H_

#include <cuda.h>

#include "absl/status/statusor.h"
#include "kernels/attention_params.h"

namespace lserve::cuda::internal {

// A bf16 pool seen as a 3-D tensor: (column within the head dim, row within a page,
// page), where a page's rows are its K blocks of every head, then its V blocks, then its
// statistics, each row head_dim wide. Boxes are 64 columns (128 bytes, 128-byte swizzle)
// by `box_rows` rows of one page; coordinates past the last page read as zeros.
absl::StatusOr<CUtensorMap> EncodePoolTensorMap(const KvPoolView& pool, int head_dim, int box_rows);

}  // namespace lserve::cuda::internal

#endif  // LSERVE_KERNELS_CUDA_POOL_TENSOR_MAP_H_
