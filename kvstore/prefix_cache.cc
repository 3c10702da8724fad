#include "kvstore/prefix_cache.h"

#include <algorithm>
#include <queue>
#include <utility>

#include "common/logging.h"

namespace lserve {
namespace {

uint64_t Mix(uint64_t x) {  // splitmix64 finalizer
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

uint64_t ChainHash(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t h = Mix(parent ^ 0x9E3779B97F4A7C15ull);
  for (int32_t token : tokens) h = Mix(h ^ static_cast<uint32_t>(token)) + 0x9E3779B97F4A7C15ull;
  // 0 and the root marker never name a node.
  return h == 0 || h == kPrefixRootHash ? h + 2 : h;
}

const PrefixCache::Node* PrefixCache::Find(uint64_t hash, std::span<const int32_t> tokens) const {
  auto it = nodes_.find(hash);
  if (it == nodes_.end()) return nullptr;
  // A hash collision must not share another prompt's KV.
  if (!std::equal(tokens.begin(), tokens.end(), it->second.tokens.begin(),
                  it->second.tokens.end())) {
    return nullptr;
  }
  return &it->second;
}

PrefixMatch PrefixCache::Match(std::span<const int32_t> prompt) {
  ++stats_.lookups;
  stats_.lookup_tokens += static_cast<int64_t>(prompt.size());
  PrefixMatch match;
  const int64_t p = tables_->config().page_size;
  if (prompt.empty()) return match;
  const int64_t max_pages = (static_cast<int64_t>(prompt.size()) - 1) / p;
  std::vector<const Node*> chain;
  uint64_t hash = kPrefixRootHash;
  for (int64_t i = 0; i < max_pages; ++i) {
    const auto tokens = prompt.subspan(i * p, p);
    hash = ChainHash(hash, tokens);
    const Node* node = Find(hash, tokens);
    if (node == nullptr || (tables_->has_dense() && node->dense == kNoPage)) break;
    chain.push_back(node);
    match.hashes.push_back(hash);
  }
  int64_t pages = static_cast<int64_t>(chain.size());
  if (tables_->has_streaming()) {
    // The deepest page boundary whose sink and prefill window are still cached.
    std::vector<int64_t> missing_before(pages + 1, 0);
    for (int64_t i = 0; i < pages; ++i) {
      missing_before[i + 1] = missing_before[i] + (chain[i]->streaming == kNoPage);
    }
    const RingGeometry& g = tables_->ring_geometry();
    auto missing = [&](int64_t begin, int64_t end) {
      return begin < end && missing_before[end] - missing_before[begin] > 0;
    };
    while (pages > 0) {
      const int64_t length = pages * p;
      const int64_t window = std::max(g.sink_pages, g.WindowBegin(length));
      if (!missing(0, g.SinkEnd(length)) && !missing(window, pages)) break;
      --pages;
    }
  }
  match.tokens = pages * p;
  match.hashes.resize(pages);
  for (int64_t i = 0; i < pages; ++i) {
    match.dense.push_back(chain[i]->dense);
    match.streaming.push_back(chain[i]->streaming);
  }
  return match;
}

absl::Status PrefixCache::Attach(SeqId seq, const PrefixMatch& match) {
  if (match.tokens == 0) return absl::OkStatus();
  if (absl::Status s = tables_->AttachPrefix(seq, match.tokens, match.dense, match.streaming);
      !s.ok()) {
    return s;
  }
  ++stats_.hits;
  stats_.hit_tokens += match.tokens;
  ++clock_;
  for (uint64_t hash : match.hashes) nodes_.at(hash).last_use = clock_;
  progress_[seq] = {static_cast<int64_t>(match.hashes.size()), match.hashes.back()};
  return absl::OkStatus();
}

void PrefixCache::Insert(SeqId seq, std::span<const int32_t> tokens) {
  auto length = tables_->Length(seq);
  if (!length.ok()) return;
  const int64_t p = tables_->config().page_size;
  const int64_t full = std::min<int64_t>(*length, static_cast<int64_t>(tokens.size())) / p;
  auto it = progress_.try_emplace(seq, Progress{0, kPrefixRootHash}).first;
  Progress& progress = it->second;
  ++clock_;
  for (; progress.pages < full; ++progress.pages) {
    const int64_t i = progress.pages;
    const auto page_tokens = tokens.subspan(i * p, p);
    const uint64_t hash = ChainHash(progress.hash, page_tokens);
    auto node_it = nodes_.find(hash);
    if (node_it != nodes_.end()) {
      Node& node = node_it->second;
      if (!std::equal(page_tokens.begin(), page_tokens.end(), node.tokens.begin(),
                      node.tokens.end())) {
        progress.pages = INT64_MAX / 2;  // collision: stop caching this sequence
        return;
      }
      node.last_use = clock_;
      if (node.streaming == kNoPage) {
        const PageId page = tables_->StreamingPageAt(seq, i);
        if (page != kNoPage) {
          CHECK(tables_->allocator(KvPoolKind::kStreaming).AddRef(page).ok());
          node.streaming = page;
        }
      }
      progress.hash = hash;
      continue;
    }
    Node node;
    node.parent = progress.hash;
    node.tokens.assign(page_tokens.begin(), page_tokens.end());
    node.dense = tables_->has_dense() ? tables_->DensePageAt(seq, i) : kNoPage;
    node.streaming = tables_->has_streaming() ? tables_->StreamingPageAt(seq, i) : kNoPage;
    if (node.dense != kNoPage)
      CHECK(tables_->allocator(KvPoolKind::kDense).AddRef(node.dense).ok());
    if (node.streaming != kNoPage) {
      CHECK(tables_->allocator(KvPoolKind::kStreaming).AddRef(node.streaming).ok());
    }
    node.last_use = clock_;
    if (progress.hash != kPrefixRootHash) ++nodes_.at(progress.hash).children;
    nodes_.emplace(hash, std::move(node));
    ++stats_.inserted_pages;
    progress.hash = hash;
  }
}

void PrefixCache::RemoveNode(uint64_t hash) {
  auto it = nodes_.find(hash);
  Node& node = it->second;
  if (node.dense != kNoPage) CHECK(tables_->allocator(KvPoolKind::kDense).Release(node.dense).ok());
  if (node.streaming != kNoPage) {
    CHECK(tables_->allocator(KvPoolKind::kStreaming).Release(node.streaming).ok());
  }
  const uint64_t parent = node.parent;
  nodes_.erase(it);
  if (parent != kPrefixRootHash) --nodes_.at(parent).children;
  // Sequences still adding pages below a removed node restart from the root next time.
  for (auto& [seq, progress] : progress_) {
    if (progress.hash == hash) progress = {INT64_MAX / 2, hash};
  }
}

bool PrefixCache::DenseEvictable(const Node& node) const {
  return node.children == 0 && node.dense != kNoPage &&
         tables_->dense_allocator().ref_count(node.dense) == 1;
}

int64_t PrefixCache::Reclaimable(KvPoolKind pool) const {
  // A page held only by the cache has no sequence below it in the chain either (sequences
  // share whole prefixes), so every such dense page is evictable leaf first.
  int64_t count = 0;
  for (const auto& [hash, node] : nodes_) {
    if (pool == KvPoolKind::kDense) {
      count += node.dense != kNoPage && tables_->dense_allocator().ref_count(node.dense) == 1;
    } else {
      count += node.streaming != kNoPage &&
               tables_->streaming_allocator().ref_count(node.streaming) == 1;
    }
  }
  return count;
}

int64_t PrefixCache::Reclaim(KvPoolKind pool, int64_t pages) {
  using Entry = std::pair<uint64_t, uint64_t>;  // (last_use, hash), oldest on top
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> oldest;
  int64_t freed = 0;
  if (pool == KvPoolKind::kStreaming) {
    for (const auto& [hash, node] : nodes_) {
      if (node.streaming != kNoPage &&
          tables_->streaming_allocator().ref_count(node.streaming) == 1) {
        oldest.emplace(node.last_use, hash);
      }
    }
    while (freed < pages && !oldest.empty()) {
      Node& node = nodes_.at(oldest.top().second);
      oldest.pop();
      CHECK(tables_->allocator(KvPoolKind::kStreaming).Release(node.streaming).ok());
      node.streaming = kNoPage;
      ++freed;
    }
    // Nodes left holding nothing are dropped from the leaves up.
    std::vector<uint64_t> empty;
    for (const auto& [hash, node] : nodes_) {
      if (node.children == 0 && node.dense == kNoPage && node.streaming == kNoPage) {
        empty.push_back(hash);
      }
    }
    while (!empty.empty()) {
      const uint64_t hash = empty.back();
      empty.pop_back();
      const uint64_t parent = nodes_.at(hash).parent;
      RemoveNode(hash);
      if (parent == kPrefixRootHash) continue;
      const Node& p = nodes_.at(parent);
      if (p.children == 0 && p.dense == kNoPage && p.streaming == kNoPage) empty.push_back(parent);
    }
    stats_.evicted_pages += freed;
    return freed;
  }
  for (const auto& [hash, node] : nodes_) {
    if (DenseEvictable(node)) oldest.emplace(node.last_use, hash);
  }
  while (freed < pages && !oldest.empty()) {
    const uint64_t hash = oldest.top().second;
    oldest.pop();
    const uint64_t parent = nodes_.at(hash).parent;
    RemoveNode(hash);
    ++freed;
    if (parent != kPrefixRootHash && DenseEvictable(nodes_.at(parent))) {
      oldest.emplace(nodes_.at(parent).last_use, parent);
    }
  }
  stats_.evicted_pages += freed;
  return freed;
}

void PrefixCache::Clear() {
  for (auto& [hash, node] : nodes_) {
    if (node.dense != kNoPage) {
      CHECK(tables_->allocator(KvPoolKind::kDense).Release(node.dense).ok());
    }
    if (node.streaming != kNoPage) {
      CHECK(tables_->allocator(KvPoolKind::kStreaming).Release(node.streaming).ok());
    }
  }
  nodes_.clear();
  for (auto& [seq, progress] : progress_) progress = {INT64_MAX / 2, kPrefixRootHash};
}

void PrefixCache::ForEachHeldPage(const std::function<void(KvPoolKind, PageId)>& fn) const {
  for (const auto& [hash, node] : nodes_) {
    if (node.dense != kNoPage) fn(KvPoolKind::kDense, node.dense);
    if (node.streaming != kNoPage) fn(KvPoolKind::kStreaming, node.streaming);
  }
}

}  // namespace lserve
