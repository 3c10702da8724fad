#include "kernels/cpu/paged_kv.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace lserve::cpu {

std::pair<int32_t, int32_t> DenseLocation(const PageTableView& t, int page_size, int b,
                                          int64_t pos) {
  return {t.dense_indices[t.dense_indptr[b] + pos / page_size],
          static_cast<int32_t>(pos % page_size)};
}

std::pair<int32_t, int32_t> StreamingLocation(const PageTableView& t, int page_size, int b,
                                              int64_t pos) {
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

absl::Status AppendKv(const AppendKvParams& p, ThreadPool* pool) {
  const PagedKvLayer& kv = p.kv;
  if (kv.dtype != DType::kF32) {
    return absl::InvalidArgumentError("cpu KV append stores float32 pools only");
  }
  const int d = kv.head_dim;
  const int64_t page = kv.page_size;
  const int64_t logical = kv.logical_page_size;
  const int64_t logical_per_page = page / logical;
  const PageTableView& t = p.tables;
  // Every row must land on a page the tables list.
  for (int b = 0; b < t.num_seqs; ++b) {
    const int64_t rows = p.q_indptr[b + 1] - p.q_indptr[b];
    if (rows < 0 || rows > t.kv_len[b]) {
      return absl::InvalidArgumentError(absl::StrCat("KV append: sequence ", b, " has ", rows,
                                                     " rows for ", t.kv_len[b], " tokens"));
    }
    if (kv.dense.num_heads > 0 &&
        t.dense_indptr[b + 1] - t.dense_indptr[b] < (t.kv_len[b] + page - 1) / page) {
      return absl::InvalidArgumentError(
          absl::StrCat("KV append: sequence ", b, " lacks dense pages for its tokens"));
    }
  }
  const float* k = static_cast<const float*>(p.k);
  const float* v = static_cast<const float*>(p.v);
  ParallelFor(pool, kv.num_kv_heads, 1, [&](int64_t head_begin, int64_t head_end) {
    for (int64_t h = head_begin; h < head_end; ++h) {
      const bool streaming = kv.kv_head_streaming[h] != 0;
      const int slot = kv.kv_head_slot[h];
      const KvPoolView& pool_view = streaming ? kv.streaming : kv.dense;
      float* base = static_cast<float*>(pool_view.base);
      const int64_t heads = pool_view.num_heads;
      for (int b = 0; b < t.num_seqs; ++b) {
        const int64_t first_row = p.q_indptr[b];
        const int64_t rows = p.q_indptr[b + 1] - first_row;
        const int64_t first_pos = t.kv_len[b] - rows;
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t pos = first_pos + i;
          const float* k_src = k + (first_row + i) * p.row_stride + h * d;
          const float* v_src = v + (first_row + i) * p.row_stride + h * d;
          const auto [page_id, row] = streaming ? StreamingLocation(t, kv.page_size, b, pos)
                                                : DenseLocation(t, kv.page_size, b, pos);
          float* page_base = base + page_id * pool_view.page_stride;
          std::memcpy(page_base + (slot * page + row) * d, k_src, d * sizeof(float));
          std::memcpy(page_base + ((heads + slot) * page + row) * d, v_src, d * sizeof(float));
          if (streaming) continue;
          const int64_t stats = 2 * heads * page * d;
          const int64_t j = row / logical;
          float* kmax = page_base + stats + (slot * logical_per_page + j) * d;
          float* kmin = page_base + stats + ((heads + slot) * logical_per_page + j) * d;
          if (row % logical == 0) {  // a logical page starts from its first key
            std::memcpy(kmax, k_src, d * sizeof(float));
            std::memcpy(kmin, k_src, d * sizeof(float));
            continue;
          }
          for (int c = 0; c < d; ++c) {
            kmax[c] = std::max(kmax[c], k_src[c]);
            kmin[c] = std::min(kmin[c], k_src[c]);
          }
        }
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace lserve::cpu
