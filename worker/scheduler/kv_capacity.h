// What admission and preemption ask of the KV store, for both pools: how many pages are
// available now (free plus reclaimable from the prefix cache), how many exist, and how
// many a sequence of some length holds at most.
#ifndef LSERVE_WORKER_SCHEDULER_KV_CAPACITY_H_
#define LSERVE_WORKER_SCHEDULER_KV_CAPACITY_H_

#include <cstdint>

#include "kvstore/page_tables.h"

namespace lserve {

class KvCapacity {
 public:
  virtual ~KvCapacity() = default;
  virtual PageCounts Available() const = 0;
  virtual PageCounts Capacity() const = 0;
  virtual PageCounts MaxPagesFor(int64_t tokens) const = 0;
};

// The capacity of a KV store's page tables.
class PageTablesCapacity final : public KvCapacity {
 public:
  explicit PageTablesCapacity(const KvPageTables* tables) : tables_(tables) {}
  PageCounts Available() const override { return tables_->Available(); }
  PageCounts Capacity() const override { return tables_->Capacity(); }
  PageCounts MaxPagesFor(int64_t tokens) const override { return tables_->MaxPagesFor(tokens); }

 private:
  const KvPageTables* tables_;
};

inline bool Fits(const PageCounts& need, const PageCounts& have) {
  return need.dense <= have.dense && need.streaming <= have.streaming;
}

}  // namespace lserve

#endif  // LSERVE_WORKER_SCHEDULER_KV_CAPACITY_H_
