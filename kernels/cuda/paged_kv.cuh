// Device-side addressing of the paged KV pools (kvstore/kv_pool.h's layout, the CSR page
// tables of kvstore/page_table_arrays.h), shared by the decode-path kernels, and the
// host-side check of a layer's layout. Internal to
// kernels/cuda .cu files.
#ifndef LSERVE_KERNELS_CUDA_PAGED_KV_CUH_
#define LSERVE_KERNELS_CUDA_PAGED_KV_CUH_

#include <cuda_runtime.h>

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/attention_params.h"

namespace lserve::cuda::internal {

// A token's place: physical page and row inside it.
struct KvLocation {
  int32_t page;
  int32_t row;
};

__device__ __forceinline__ KvLocation DenseLocation(const PageTableView& t, int page_size, int b,
                                                    int64_t pos) {
  return {t.dense_indices[t.dense_indptr[b] + pos / page_size],
          static_cast<int32_t>(pos % page_size)};
}

// Positions before ring_start sit in the sink pages; later ones cycle through the ring.
__device__ __forceinline__ KvLocation StreamingLocation(const PageTableView& t, int page_size,
                                                        int b, int64_t pos) {
  const int32_t first = t.stream_indptr[b];
  if (pos < t.ring_start) {
    return {t.stream_indices[first + pos / page_size], static_cast<int32_t>(pos % page_size)};
  }
  const int32_t sink = t.stream_sink_pages[b];
  const int64_t slots = t.stream_indptr[b + 1] - first - sink;
  const int64_t offset = pos - t.ring_start;
  return {t.stream_indices[first + sink + (offset / page_size) % slots],
          static_cast<int32_t>(offset % page_size)};
}

// K row of (location, slot) in a bf16 pool; V is value_offset elements further.
__device__ __forceinline__ uint16_t* KeyRow(const KvPoolView& pool, KvLocation at, int slot,
                                            int page_size, int head_dim) {
  return static_cast<uint16_t*>(pool.base) + int64_t{at.page} * pool.page_stride +
         (int64_t{slot} * page_size + at.row) * head_dim;
}

__device__ __forceinline__ int64_t ValueOffset(const KvPoolView& pool, int page_size,
                                               int head_dim) {
  return int64_t{pool.num_heads} * page_size * head_dim;
}

// kmax of (page, slot, logical page j) in the dense pool; kmin is stats_min_offset further.
__device__ __forceinline__ uint16_t* KmaxRow(const KvPoolView& pool, int32_t page, int slot,
                                             int logical_page, int page_size, int logical_per_page,
                                             int head_dim) {
  return static_cast<uint16_t*>(pool.base) + int64_t{page} * pool.page_stride +
         2 * int64_t{pool.num_heads} * page_size * head_dim +
         (int64_t{slot} * logical_per_page + logical_page) * head_dim;
}

__device__ __forceinline__ int64_t KminOffset(const KvPoolView& pool, int logical_per_page,
                                              int head_dim) {
  return int64_t{pool.num_heads} * logical_per_page * head_dim;
}

// The pool layouts the decode-path kernels serve.
inline absl::Status CheckLayer(const PagedKvLayer& kv, const char* op) {
  if (kv.dtype != DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat("cuda ", op, ": bf16 pools only"));
  }
  if (kv.head_dim <= 0 || kv.head_dim % 8 != 0 || kv.page_size <= 0 || kv.logical_page_size <= 0 ||
      kv.page_size % kv.logical_page_size != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cuda ", op, ": head_dim must be a multiple of 8 and page_size of logical_page_size"));
  }
  return absl::OkStatus();
}

}  // namespace lserve::cuda::internal

#endif  // LSERVE_KERNELS_CUDA_PAGED_KV_CUH_
