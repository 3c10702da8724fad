// Prefix caching: full pages of identical prompt prefixes are shared across requests.
//
// A cached page is a node keyed by a content hash chain (the page's token ids plus its
// predecessor's hash), holding one reference on its dense page (with that page's key
// statistics) and, while it can, one on its streaming page. A new sequence that matches a
// chain shares the dense pages, the sink pages, and the streaming pages of the prefill
// window at the end of the match; everything else it computes. Shared pages are never
// written again (the streaming ring copies on write), so the cache's references keep
// them valid after the sequences that made them are gone.
//
// Pages held only by the cache are reclaimable: when a pool runs short, dense nodes are
// evicted leaf first in least-recently-used order, and streaming references are dropped
// least recently used first.
#ifndef LSERVE_KVSTORE_PREFIX_CACHE_H_
#define LSERVE_KVSTORE_PREFIX_CACHE_H_

#include <cstdint>
#include <functional>
#include <span>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "kvstore/page_tables.h"

namespace lserve {

struct PrefixMatch {
  int64_t tokens = 0;             // whole pages, at least one prompt token left over
  std::vector<PageId> dense;      // per page index
  std::vector<PageId> streaming;  // per page index; kNoPage where not needed
  std::vector<uint64_t> hashes;   // node of each page index
};

struct PrefixCacheStats {
  int64_t lookups = 0;
  int64_t lookup_tokens = 0;  // prompt tokens looked up
  int64_t hits = 0;           // lookups that shared at least one page
  int64_t hit_tokens = 0;     // prompt tokens served from the cache
  int64_t inserted_pages = 0;
  int64_t evicted_pages = 0;  // dense and streaming references dropped
};

class PrefixCache final : public PageReclaimer {
 public:
  explicit PrefixCache(KvPageTables* tables) : tables_(tables) {}
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;

  // The longest usable cached prefix of `prompt` (counted as a lookup).
  PrefixMatch Match(std::span<const int32_t> prompt);
  // Shares a match's pages with a fresh sequence.
  absl::Status Attach(SeqId seq, const PrefixMatch& match);
  // Caches the full pages among the sequence's committed tokens whose ids are `tokens`
  // (from position 0); pages cached by earlier calls are skipped.
  void Insert(SeqId seq, std::span<const int32_t> tokens);
  // Drops the insertion progress of a sequence that is gone.
  void Forget(SeqId seq) { progress_.erase(seq); }
  // Releases every reference the cache holds.
  void Clear();

  int64_t Reclaimable(KvPoolKind pool) const override;
  int64_t Reclaim(KvPoolKind pool, int64_t pages) override;

  // Calls fn for every page the cache holds a reference on.
  void ForEachHeldPage(const std::function<void(KvPoolKind, PageId)>& fn) const;
  int64_t num_nodes() const { return static_cast<int64_t>(nodes_.size()); }
  const PrefixCacheStats& stats() const { return stats_; }

 private:
  struct Node {
    uint64_t parent = 0;
    std::vector<int32_t> tokens;
    PageId dense = kNoPage;
    PageId streaming = kNoPage;
    int children = 0;
    uint64_t last_use = 0;
  };
  struct Progress {
    int64_t pages = 0;
    uint64_t hash = 0;
  };

  const Node* Find(uint64_t hash, std::span<const int32_t> tokens) const;
  void RemoveNode(uint64_t hash);
  bool DenseEvictable(const Node& node) const;

  KvPageTables* tables_;
  std::unordered_map<uint64_t, Node> nodes_;
  std::unordered_map<SeqId, Progress> progress_;
  uint64_t clock_ = 0;
  PrefixCacheStats stats_;
};

// Hash of a page of token ids chained to its predecessor's hash.
uint64_t ChainHash(uint64_t parent, std::span<const int32_t> tokens);
inline constexpr uint64_t kPrefixRootHash = 0x6c73657276653031ull;

}  // namespace lserve

#endif  // LSERVE_KVSTORE_PREFIX_CACHE_H_
