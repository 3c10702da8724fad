// The byte ranges of a page-to-page KV transfer between two stores of the same shape.
// Layer by layer, each range is a run of pages consecutive on both sides, so both sides
// compute ranges of equal sizes in equal order from the two placements.
#ifndef LSERVE_WORKER_SERVICE_KV_PAGE_RUNS_H_
#define LSERVE_WORKER_SERVICE_KV_PAGE_RUNS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvstore/kv_pool.h"
#include "kvstore/kv_snapshot.h"

namespace lserve {

struct KvByteRange {
  uint8_t* data = nullptr;  // in the pool's memory space
  size_t bytes = 0;
  int layer = 0;
  bool operator==(const KvByteRange&) const = default;
};

struct KvPageRun {
  int32_t local = 0;   // first page on this side
  int32_t remote = 0;  // first page on the other side
  int32_t count = 0;
  bool operator==(const KvPageRun&) const = default;
};

// Runs of i where local[i] and remote[i] both step by one; empty unless the lists have
// equal lengths.
std::vector<KvPageRun> MatchedPageRuns(const std::vector<int32_t>& local,
                                       const std::vector<int32_t>& remote);

// This side's ranges: for each layer, the dense runs then the streaming runs (a pool
// with no heads in a layer has none). `local` is this side's placement, `remote` the
// other's.
std::vector<KvByteRange> KvTransferRanges(const KvPool& dense, const KvPool& streaming,
                                          const KvPlacement& local, const KvPlacement& remote);

int64_t TotalBytes(const std::vector<KvByteRange>& ranges);

}  // namespace lserve

#endif  // LSERVE_WORKER_SERVICE_KV_PAGE_RUNS_H_
