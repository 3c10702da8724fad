// A two-rank NCCL communicator that moves byte ranges from one GPU to another: rank 0
// sends, rank 1 receives. No NCCL or CUDA types here, so code without the toolkit's
// headers can hold a link.
//
// The communicator is non-blocking: joining, posting and waiting all poll against a
// deadline, and a link whose peer fails or stops answering aborts its communicator
// (ncclCommAbort) instead of hanging; it is broken from then on.
#ifndef LSERVE_KERNELS_NCCL_NCCL_LINK_H_
#define LSERVE_KERNELS_NCCL_NCCL_LINK_H_

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lserve::nccl {

using Deadline = std::chrono::steady_clock::time_point;

struct ByteRange {
  void* data = nullptr;  // device memory of the link's device
  size_t bytes = 0;
  int layer = 0;  // ranges come layer by layer; groups of transfers end between layers
};

// A sender's transfer of data still being computed on its device (rank 0 only): the
// ranges of layer l are sent once the work that writes them has passed an event.
struct LayerGates {
  // Blocks until layer l's work is queued; returns the cudaEvent_t that follows it.
  std::function<absl::StatusOr<void*>(int layer)> placed;
  // How long the transfer may take once the last layer's data is written.
  std::chrono::milliseconds transfer_time{2000};
};

class NcclLink {
 public:
  // A fresh communicator id (ncclGetUniqueId), to be sent to the peer.
  static absl::StatusOr<std::string> NewUniqueId();
  // Joins the communicator `unique_id` as `rank` (0 or 1) on `device`; the peer joins at
  // the same time. DEADLINE_EXCEEDED when the peer does not join in time; CANCELLED
  // when `cancelled` (if given) turns true first.
  static absl::StatusOr<std::unique_ptr<NcclLink>> Open(
      std::string_view unique_id, int rank, int device, Deadline deadline,
      const std::atomic<bool>* cancelled = nullptr);
  ~NcclLink();
  NcclLink(const NcclLink&) = delete;
  NcclLink& operator=(const NcclLink&) = delete;

  int rank() const;
  int device() const;
  bool broken() const;
  // Device memory the communicator took when it was created.
  int64_t device_bytes() const;

  // Sends (rank 0) or receives (rank 1) `ranges`, in order, on the link's stream and
  // waits until they are done; the peer transfers ranges of the same sizes at the same
  // time (the first transfer also connects the two). Large ranges go as they are, in
  // groups of at most 1 GiB; small ones (scattered pages) are gathered into two 128 MiB
  // staging buffers in turn and sent chunk by chunk (one travels while the next is
  // gathered), and scattered on the other side. On an error
  // or at the deadline it aborts the communicator. Transfers on one link must not overlap.
  // Groups end between layers once they hold 64 MiB. With `gates` (the sender only), each
  // group waits on the device for its last layer's event; `deadline` then also bounds
  // the computation, and the transfer gets gates->transfer_time after its last layer.
  absl::Status Transfer(std::span<const ByteRange> ranges, Deadline deadline,
                        const LayerGates* gates = nullptr);
  // Whether Transfer stages these ranges (both ranks decide alike).
  static bool Staged(std::span<const ByteRange> ranges);
  // Aborts the communicator (a peer is known dead); the link is broken.
  void Abort(std::string_view why);

  struct Impl;

 private:
  explicit NcclLink(std::unique_ptr<Impl> impl);
  absl::Status PostGroup(std::span<const ByteRange> group, Deadline deadline);
  // Makes `stream` (a cudaStream_t) wait for `layer`'s event; returns the event.
  absl::StatusOr<void*> WaitForLayer(const LayerGates& gates, int layer, void* stream);
  // Waits for the queued transfers; after gated ones, first for `last_gate` to pass.
  absl::Status Finish(const LayerGates* gates, void* last_gate, Deadline deadline);
  absl::Status WaitStream(Deadline deadline);
  absl::Status TransferStaged(std::span<const ByteRange> ranges, Deadline deadline,
                              const LayerGates* gates);
  std::unique_ptr<Impl> impl_;
};

}  // namespace lserve::nccl

#endif  // LSERVE_KERNELS_NCCL_NCCL_LINK_H_
