#include "worker/service/kv_page_runs.h"

#include <algorithm>
#include <utility>

namespace lserve {

std::vector<KvPageRun> MatchedPageRuns(const std::vector<int32_t>& local,
                                       const std::vector<int32_t>& remote) {
  std::vector<KvPageRun> runs;
  if (local.size() != remote.size()) return runs;
  for (size_t i = 0; i < local.size(); ++i) {
    if (!runs.empty()) {
      KvPageRun& last = runs.back();
      if (local[i] == last.local + last.count && remote[i] == last.remote + last.count) {
        ++last.count;
        continue;
      }
    }
    runs.push_back({local[i], remote[i], 1});
  }
  return runs;
}

std::vector<KvByteRange> KvTransferRanges(const KvPool& dense, const KvPool& streaming,
                                          const KvPlacement& local, const KvPlacement& remote) {
  const std::vector<KvPageRun> dense_runs = MatchedPageRuns(local.dense, remote.dense);
  const std::vector<KvPageRun> streaming_runs = MatchedPageRuns(local.streaming, remote.streaming);
  std::vector<KvByteRange> ranges;
  const int layers = std::max(dense.num_layers(), streaming.num_layers());
  for (int layer = 0; layer < layers; ++layer) {
    for (const auto& [pool, runs] :
         {std::pair{&dense, &dense_runs}, {&streaming, &streaming_runs}}) {
      if (layer >= pool->num_layers()) continue;
      const size_t page_bytes = pool->PageBytes(layer);
      if (page_bytes == 0) continue;
      uint8_t* base = static_cast<uint8_t*>(pool->LayerBase(layer));
      for (const KvPageRun& run : *runs) {
        ranges.push_back({base + static_cast<size_t>(run.local) * page_bytes,
                          static_cast<size_t>(run.count) * page_bytes, layer});
      }
    }
  }
  return ranges;
}

int64_t TotalBytes(const std::vector<KvByteRange>& ranges) {
  int64_t total = 0;
  for (const KvByteRange& range : ranges) total += static_cast<int64_t>(range.bytes);
  return total;
}

}  // namespace lserve
