#include "kvstore/kv_store_config.h"

#include "absl/strings/str_cat.h"

namespace lserve {

absl::Status ValidateKvStoreConfig(const KvStoreConfig& c) {
  auto invalid = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("KV store config: ", parts...));
  };
  if (c.num_layers <= 0 || c.num_kv_heads <= 0 || c.head_dim <= 0) {
    return invalid("layers, KV heads and head_dim must be positive");
  }
  if (c.page_size <= 0 || c.logical_page_size <= 0 || c.page_size % c.logical_page_size != 0) {
    return invalid("page_size (", c.page_size, ") must be a positive multiple of ",
                   "logical_page_size (", c.logical_page_size, ")");
  }
  if (c.num_dense_pages < 0 || c.num_streaming_pages < 0) return invalid("negative page count");
  if (c.num_dense_pages > INT32_MAX || c.num_streaming_pages > INT32_MAX) {
    return invalid("page count exceeds 2^31");
  }
  if (!c.layout.layers.empty()) {
    if (static_cast<int>(c.layout.layers.size()) != c.num_layers) {
      return invalid("head layout has ", c.layout.layers.size(), " layers, model has ",
                     c.num_layers);
    }
    for (const auto& layer : c.layout.layers) {
      if (static_cast<int>(layer.streaming.size()) != c.num_kv_heads) {
        return invalid("head layout has ", layer.streaming.size(), " heads per layer, model has ",
                       c.num_kv_heads);
      }
    }
  }
  if (c.sink < 0 || c.prefill_local <= 0 || c.decode_local <= 0) {
    return invalid("streaming windows: sink must be >= 0 and local windows > 0");
  }
  if (c.decode_local > c.prefill_local) {
    return invalid("decode_local (", c.decode_local, ") exceeds prefill_local (", c.prefill_local,
                   ")");
  }
  if (c.max_chunk_tokens <= 0) return invalid("max_chunk_tokens must be positive");
  return absl::OkStatus();
}

}  // namespace lserve
