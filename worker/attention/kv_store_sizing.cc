#include "worker/attention/kv_store_sizing.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/attention/head_classifier.h"

namespace lserve {

int64_t DensePageBytes(const KvStoreConfig& c) {
  const int64_t element = static_cast<int64_t>(DTypeSize(c.dtype));
  const int64_t per_head =
      element * c.head_dim * (2 * c.page_size + 2 * (c.page_size / c.logical_page_size));
  int64_t bytes = 0;
  for (const LayerHeadLayout& layer : c.layout.layers) bytes += layer.num_dense * per_head;
  return bytes;
}

int64_t StreamingPageBytes(const KvStoreConfig& c) {
  const int64_t element = static_cast<int64_t>(DTypeSize(c.dtype));
  int64_t bytes = 0;
  for (const LayerHeadLayout& layer : c.layout.layers) {
    bytes += layer.num_streaming * element * c.head_dim * 2 * c.page_size;
  }
  return bytes;
}

int64_t KvBytesFromFreeMemory(int64_t free_bytes, double fraction, int64_t reserve) {
  const int64_t share = static_cast<int64_t>(static_cast<double>(free_bytes) * fraction);
  return std::max<int64_t>(0, std::min(share, free_bytes - reserve));
}

absl::StatusOr<KvStoreConfig> KvStoreConfigFor(const SparseAttentionConfig& attention,
                                               const KvGeometry& geometry,
                                               const KvMemoryBudget& capacity) {
  RETURN_IF_ERROR(ValidateSparseAttentionConfig(attention));
  if (capacity.max_sequences <= 0) {
    return absl::InvalidArgumentError("max_sequences must be > 0");
  }
  KvStoreConfig c;
  c.num_layers = geometry.num_layers;
  c.num_kv_heads = geometry.num_kv_heads;
  c.head_dim = geometry.head_dim;
  c.page_size = attention.page_size;
  c.logical_page_size = attention.logical_page_size;
  c.sink = attention.sink;
  c.prefill_local = attention.prefill_local;
  c.decode_local = attention.decode_local;
  c.max_chunk_tokens = capacity.max_chunk_tokens;
  c.dtype = capacity.dtype;
  ASSIGN_OR_RETURN(c.layout, HeadLayoutFor(attention, geometry.num_layers, geometry.num_kv_heads));
  const int64_t p = attention.page_size;
  const int64_t pages_per_context = (geometry.max_context + p - 1) / p;
  // A streaming sequence holds its sink pages plus a ring sized for the prefill window.
  const bool has_streaming = c.layout.TotalStreamingHeads() > 0;
  const int64_t streaming_per_sequence = std::min(
      pages_per_context, (attention.sink + p - 1) / p +
                             (attention.prefill_local + capacity.max_chunk_tokens + p - 1) / p + 1);
  c.num_streaming_pages =
      capacity.streaming_pages > 0
          ? capacity.streaming_pages
          : (has_streaming ? streaming_per_sequence * capacity.max_sequences : 0);
  if (capacity.dense_pages > 0) {
    c.num_dense_pages = capacity.dense_pages;
  } else {
    const int64_t dense_page_bytes = DensePageBytes(c);
    const int64_t left = capacity.max_bytes - c.num_streaming_pages * StreamingPageBytes(c);
    c.num_dense_pages =
        std::min(pages_per_context * capacity.max_sequences,
                 dense_page_bytes > 0 ? left / dense_page_bytes : pages_per_context);
    if (c.num_dense_pages <= 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("max_kv_cache_bytes (", capacity.max_bytes,
                       ") leaves no room for dense KV pages after the streaming pool"));
    }
  }
  RETURN_IF_ERROR(ValidateKvStoreConfig(c));
  return c;
}

}  // namespace lserve
