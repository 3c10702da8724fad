// Appending K/V to the paged pools with the page statistics update (CPU backend), and the
// page-table lookups the CPU kernels share.
#ifndef LSERVE_KERNELS_CPU_PAGED_KV_H_
#define LSERVE_KERNELS_CPU_PAGED_KV_H_

#include <cstdint>
#include <utility>

#include "absl/status/status.h"
#include "common/thread_pool.h"
#include "kernels/attention_params.h"

namespace lserve::cpu {

// (page, row) of position `pos` of sequence b in the dense and the streaming pool.
std::pair<int32_t, int32_t> DenseLocation(const PageTableView& tables, int page_size, int b,
                                          int64_t pos);
std::pair<int32_t, int32_t> StreamingLocation(const PageTableView& tables, int page_size, int b,
                                              int64_t pos);

// Float32 pools only. Threads split the KV heads; each head's rows are appended in order,
// so statistics fold keys exactly as a sequential append would.
absl::Status AppendKv(const AppendKvParams& params, ThreadPool* pool);

}  // namespace lserve::cpu

#endif  // LSERVE_KERNELS_CPU_PAGED_KV_H_
