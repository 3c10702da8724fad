// Replayable steps of the CUDA backend (Backend::BeginReplayableStep) as CUDA graphs. A
// step's ops are recorded as their params instead of launched. The backend cuts a step
// into segments of a few layers' ops; each segment's tape, once recorded, is compared
// with the tapes of cached graphs. Equal params mean equal launches (every pointer, shape
// and host hint the same), so an equal tape replays its graph, the staged arrays having
// been copied to the same addresses first. A tape that ran op by op recently is captured
// into a new graph when it comes again; a new tape runs op by op. The host records the
// next segment while the device runs this one, and a decode step is a few graph launches
// instead of hundreds of kernel launches.
#ifndef LSERVE_KERNELS_CUDA_STEP_GRAPHS_H_
#define LSERVE_KERNELS_CUDA_STEP_GRAPHS_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <utility>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/backend.h"
#include "kernels/layer_params.h"
#include "kernels/sampling_params.h"

namespace lserve::cuda {

using RecordedOp =
    std::variant<EmbeddingParams, RmsNormParams, RopeParams, SiluMulParams, GemmParams,
                 GemmSiluMulParams, AppendKvParams, RopeAppendKvParams, PagedAttentionParams,
                 ScorePagesParams, SelectPagesParams, SampleParams>;
using StepTape = std::vector<RecordedOp>;
// Launches one recorded op on the stream being run or captured.
using OpLauncher = std::function<absl::Status(const RecordedOp&)>;

class StepGraphCache {
 public:
  // At most `capacity` graphs are kept, the least recently replayed going first.
  explicit StepGraphCache(int capacity = 256) : capacity_(capacity) {}
  ~StepGraphCache() { Clear(); }
  StepGraphCache(const StepGraphCache&) = delete;
  StepGraphCache& operator=(const StepGraphCache&) = delete;

  // Runs `tape`, segment `segment` of a step, on `stream` (a stream that may be captured):
  // replays the graph of an equal tape at that segment, captures one when an equal tape
  // ran op by op lately, else launches op by op. A capture that fails (an op that must not
  // run under capture) is dropped and the tape runs op by op.
  absl::Status Run(int segment, StepTape tape, void* stream, const OpLauncher& launch);
  // Drops every graph, e.g. when a buffer the launches use outside their params moved.
  void Clear();
  const ReplayCounters& counters() const { return counters_; }
  int64_t graphs() const { return static_cast<int64_t>(graphs_.size()); }

 private:
  struct Graph {
    int segment = 0;
    StepTape tape;
    void* exec = nullptr;  // cudaGraphExec_t
    uint64_t last_use = 0;
  };
  absl::Status RunEagerly(const StepTape& tape, const OpLauncher& launch);
  // Captures and instantiates `tape` (cudaGraphExec_t); null when that fails for any
  // reason (nothing has run then, and the segment runs op by op).
  void* Capture(const StepTape& tape, void* stream, const OpLauncher& launch);

  int capacity_;
  uint64_t clock_ = 0;
  std::vector<Graph> graphs_;
  std::deque<std::pair<int, StepTape>> recent_;  // (segment, tape) run op by op lately
  ReplayCounters counters_;
};

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_STEP_GRAPHS_H_
