#include "kvstore/kv_store.h"

#include <algorithm>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace lserve {

KvShape KvShape::Of(const KvStoreConfig& c) {
  KvShape shape;
  shape.num_layers = c.num_layers;
  shape.num_kv_heads = c.num_kv_heads;
  shape.head_dim = c.head_dim;
  shape.page_size = c.page_size;
  shape.logical_page_size = c.logical_page_size;
  shape.dtype = c.dtype;
  for (const LayerHeadLayout& layer : c.layout.layers) {
    for (bool streaming : layer.streaming) shape.streaming.push_back(streaming ? 1 : 0);
  }
  shape.sink = c.sink;
  shape.prefill_local = c.prefill_local;
  shape.decode_local = c.decode_local;
  shape.max_chunk_tokens = c.max_chunk_tokens;
  return shape;
}

absl::Status CheckCompatible(const KvShape& a, const KvShape& b) {
  auto differ = [](const char* what, auto x, auto y) {
    return absl::InvalidArgumentError(absl::StrCat("KV snapshot does not fit this store: ", what,
                                                   " is ", x, ", the store has ", y));
  };
  if (a.num_layers != b.num_layers) return differ("num_layers", a.num_layers, b.num_layers);
  if (a.num_kv_heads != b.num_kv_heads)
    return differ("num_kv_heads", a.num_kv_heads, b.num_kv_heads);
  if (a.head_dim != b.head_dim) return differ("head_dim", a.head_dim, b.head_dim);
  if (a.page_size != b.page_size) return differ("page_size", a.page_size, b.page_size);
  if (a.logical_page_size != b.logical_page_size) {
    return differ("logical_page_size", a.logical_page_size, b.logical_page_size);
  }
  if (a.dtype != b.dtype)
    return differ("dtype", std::string(DTypeName(a.dtype)), std::string(DTypeName(b.dtype)));
  if (a.streaming != b.streaming) {
    return absl::InvalidArgumentError(
        "KV snapshot does not fit this store: the streaming heads differ");
  }
  if (a.sink != b.sink || a.prefill_local != b.prefill_local || a.decode_local != b.decode_local ||
      a.max_chunk_tokens != b.max_chunk_tokens) {
    return absl::InvalidArgumentError(
        "KV snapshot does not fit this store: the streaming windows differ");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<KvStore>> KvStore::Create(KvStoreConfig config, MemorySpace* memory,
                                                         bool prefix_caching) {
  if (config.layout.layers.empty()) {
    config.layout = HeadLayout::AllDense(config.num_layers, config.num_kv_heads);
  }
  if (absl::Status status = ValidateKvStoreConfig(config); !status.ok()) return status;
  std::unique_ptr<KvStore> store(new KvStore(config));
  KvPoolGeometry dense, streaming;
  for (KvPoolGeometry* g : {&dense, &streaming}) {
    g->dtype = config.dtype;
    g->page_size = config.page_size;
    g->logical_page_size = config.logical_page_size;
    g->head_dim = config.head_dim;
  }
  dense.with_stats = true;
  dense.num_pages = config.num_dense_pages;
  streaming.num_pages = config.num_streaming_pages;
  for (const LayerHeadLayout& layer : config.layout.layers) {
    dense.heads.push_back(layer.num_dense);
    streaming.heads.push_back(layer.num_streaming);
  }
  absl::StatusOr<KvPool> dense_pool = KvPool::Create(dense, memory);
  if (!dense_pool.ok()) return dense_pool.status();
  absl::StatusOr<KvPool> streaming_pool = KvPool::Create(streaming, memory);
  if (!streaming_pool.ok()) return streaming_pool.status();
  store->dense_pool_ = *std::move(dense_pool);
  store->streaming_pool_ = *std::move(streaming_pool);
  if (prefix_caching) {
    store->prefix_cache_ = std::make_unique<PrefixCache>(&store->tables_);
    store->tables_.set_reclaimer(store->prefix_cache_.get());
  }
  return store;
}

KvStore::~KvStore() {
  if (prefix_cache_ != nullptr) prefix_cache_->Clear();
}

absl::Status KvStore::FreeSequence(SeqId seq) {
  if (prefix_cache_ != nullptr) prefix_cache_->Forget(seq);
  return tables_.FreeSequence(seq);
}

KvUsage KvStore::Usage() const {
  KvUsage usage;
  usage.dense_total = tables_.dense_allocator().num_pages();
  usage.streaming_total = tables_.streaming_allocator().num_pages();
  if (prefix_cache_ != nullptr) {
    usage.dense_cached = prefix_cache_->Reclaimable(KvPoolKind::kDense);
    usage.streaming_cached = prefix_cache_->Reclaimable(KvPoolKind::kStreaming);
  }
  usage.dense_used = tables_.dense_allocator().num_used() - usage.dense_cached;
  usage.streaming_used = tables_.streaming_allocator().num_used() - usage.streaming_cached;
  return usage;
}

absl::Status KvStore::CheckConsistency() const {
  std::map<std::pair<KvPoolKind, PageId>, int32_t> holders;
  for (SeqId seq : tables_.Sequences()) {
    for (PageId page : tables_.DensePages(seq)) ++holders[{KvPoolKind::kDense, page}];
    const StreamingRing& ring = tables_.Ring(seq);
    for (PageId page : ring.sink_pages()) ++holders[{KvPoolKind::kStreaming, page}];
    for (PageId page : ring.slots()) {
      if (page != kNoPage) ++holders[{KvPoolKind::kStreaming, page}];
    }
  }
  if (prefix_cache_ != nullptr) {
    prefix_cache_->ForEachHeldPage([&](KvPoolKind pool, PageId page) { ++holders[{pool, page}]; });
  }
  for (KvPoolKind pool : {KvPoolKind::kDense, KvPoolKind::kStreaming}) {
    const PageAllocator& allocator =
        pool == KvPoolKind::kDense ? tables_.dense_allocator() : tables_.streaming_allocator();
    for (PageId page = 0; page < allocator.num_pages(); ++page) {
      auto it = holders.find({pool, page});
      const int32_t expected = it == holders.end() ? 0 : it->second;
      if (allocator.ref_count(page) != expected) {
        return absl::InternalError(absl::StrCat(
            pool == KvPoolKind::kDense ? "dense" : "streaming", " page ", page,
            " has reference count ", allocator.ref_count(page), " but ", expected, " holders"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace lserve
