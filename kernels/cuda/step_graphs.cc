#include "kernels/cuda/step_graphs.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <utility>

#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"

namespace lserve::cuda {
namespace {

using internal::AsStream;
using internal::CudaStatus;

// Tapes that ran op by op, kept to recognize a second occurrence.
constexpr size_t kRecentTapes = 64;

cudaGraphExec_t AsExec(void* exec) { return static_cast<cudaGraphExec_t>(exec); }

}  // namespace

void StepGraphCache::Clear() {
  for (Graph& graph : graphs_) cudaGraphExecDestroy(AsExec(graph.exec));
  graphs_.clear();
  recent_.clear();
}

absl::Status StepGraphCache::RunEagerly(const StepTape& tape, const OpLauncher& launch) {
  ++counters_.eager;
  for (const RecordedOp& op : tape) RETURN_IF_ERROR(launch(op));
  return absl::OkStatus();
}

void* StepGraphCache::Capture(const StepTape& tape, void* stream, const OpLauncher& launch) {
  if (cudaStreamBeginCapture(AsStream(stream), cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
    (void)cudaGetLastError();
    return nullptr;
  }
  absl::Status launched = absl::OkStatus();
  for (const RecordedOp& op : tape) {
    launched = launch(op);
    if (!launched.ok()) break;
  }
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(AsStream(stream), &graph);
  if (!launched.ok() || ended != cudaSuccess || graph == nullptr) {
    // An op refused to run under capture, or capture was invalidated: nothing ran.
    if (graph != nullptr) cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    return nullptr;
  }
  cudaGraphExec_t exec = nullptr;
  const cudaError_t instantiated = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  if (instantiated != cudaSuccess) {
    (void)cudaGetLastError();
    return nullptr;
  }
  return static_cast<void*>(exec);
}

absl::Status StepGraphCache::Run(int segment, StepTape tape, void* stream,
                                 const OpLauncher& launch) {
  ++clock_;
  for (Graph& graph : graphs_) {
    if (graph.segment != segment || graph.tape != tape) continue;
    graph.last_use = clock_;
    ++counters_.replayed;
    return CudaStatus(cudaGraphLaunch(AsExec(graph.exec), AsStream(stream)), "step graph launch");
  }
  auto seen = std::find_if(recent_.begin(), recent_.end(), [&](const auto& recent) {
    return recent.first == segment && recent.second == tape;
  });
  if (seen == recent_.end()) {
    RETURN_IF_ERROR(RunEagerly(tape, launch));
    recent_.emplace_back(segment, std::move(tape));
    if (recent_.size() > kRecentTapes) recent_.pop_front();
    return absl::OkStatus();
  }
  recent_.erase(seen);
  void* exec = Capture(tape, stream, launch);
  if (exec == nullptr) {
    ++counters_.capture_failures;
    return RunEagerly(tape, launch);
  }
  if (static_cast<int>(graphs_.size()) >= capacity_) {
    auto oldest =
        std::min_element(graphs_.begin(), graphs_.end(),
                         [](const Graph& a, const Graph& b) { return a.last_use < b.last_use; });
    cudaGraphExecDestroy(AsExec(oldest->exec));
    graphs_.erase(oldest);
  }
  graphs_.push_back({segment, std::move(tape), exec, clock_});
  ++counters_.captured;
  return CudaStatus(cudaGraphLaunch(AsExec(exec), AsStream(stream)), "step graph launch");
}

}  // namespace lserve::cuda
