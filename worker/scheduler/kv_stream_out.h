// A prefill-only request's KV sent out while its last prompt chunk is computed: the
// disaggregated hand-off over a device transport overlaps the transfer with the rest of
// the prefill, layer by layer (DESIGN.md §1).
#ifndef LSERVE_WORKER_SCHEDULER_KV_STREAM_OUT_H_
#define LSERVE_WORKER_SCHEDULER_KV_STREAM_OUT_H_

#include <memory>

#include "kernels/queue_marks.h"
#include "kvstore/kv_snapshot.h"
#include "worker/scheduler/request.h"

namespace lserve {

class KvStreamOut {
 public:
  virtual ~KvStreamOut() = default;
  // Engine thread, inside the step that computes the request's last prompt chunk (at
  // most once per request); must not block. `id` names the request and, afterwards, its
  // KV lease. `pages` are the pages its KV fills, pinned until
  // Scheduler::EndLeasedExport(id); those of layer l are final once mark l has passed.
  virtual void Start(RequestId id, KvPageExport pages, std::shared_ptr<QueueMarks> marks) = 0;
};

}  // namespace lserve

#endif  // LSERVE_WORKER_SCHEDULER_KV_STREAM_OUT_H_
