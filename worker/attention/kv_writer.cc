#include "worker/attention/kv_writer.h"

#include "common/status_macros.h"

namespace lserve {

SparseAttentionConfig AttentionConfigFor(const KvStoreConfig& config) {
  SparseAttentionConfig attention;
  attention.page_size = config.page_size;
  attention.logical_page_size = config.logical_page_size;
  attention.sink = config.sink;
  attention.prefill_local = config.prefill_local;
  attention.decode_local = config.decode_local;
  return attention;
}

absl::StatusOr<std::unique_ptr<KvWriter>> KvWriter::Create(KvStore* store, Backend* backend) {
  std::unique_ptr<KvWriter> writer(new KvWriter(store, backend));
  // Appending never reads the attention heads; one query head per KV head will do.
  ASSIGN_OR_RETURN(writer->attention_,
                   HybridAttention::Create(store, AttentionConfigFor(store->config()),
                                           store->config().num_kv_heads, backend));
  return writer;
}

absl::Status KvWriter::Append(SeqId seq, int64_t n, bool decode, std::span<const float* const> k,
                              std::span<const float* const> v) {
  const KvStoreConfig& c = store_->config();
  if (static_cast<int>(k.size()) != c.num_layers || static_cast<int>(v.size()) != c.num_layers) {
    return absl::InvalidArgumentError("KvWriter: one K and one V block per layer");
  }
  if (!store_->tables().HasSequence(seq)) RETURN_IF_ERROR(store_->AddSequence(seq));
  ASSIGN_OR_RETURN(const int64_t start, store_->tables().Length(seq));
  RETURN_IF_ERROR(store_->tables().Extend(seq, n, decode));
  backend_->BeginStep();
  const AttentionSequence entry{seq, 0, n, start, decode, 0};
  RETURN_IF_ERROR(plan_.Build(*store_, {&entry, 1}, attention_->config(), backend_));
  if (!backend_->memory()->host_accessible() || c.dtype != DType::kF32) {
    return absl::UnimplementedError("KvWriter writes float32 rows into host-memory stores");
  }
  const int64_t width = int64_t{c.num_kv_heads} * c.head_dim;
  for (int layer = 0; layer < c.num_layers; ++layer) {
    RETURN_IF_ERROR(attention_->Append(layer, plan_, k[layer], v[layer], width));
  }
  RETURN_IF_ERROR(backend_->Synchronize());
  return store_->tables().Commit(seq, n);
}

}  // namespace lserve
