// Internal to kernels/cuda: what the decode attention kernels share (their arguments,
// key ranges and addressing).
#ifndef LSERVE_KERNELS_CUDA_PAGED_DECODE_CUH_
#define LSERVE_KERNELS_CUDA_PAGED_DECODE_CUH_

#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/attention_params.h"
#include "kernels/cuda/attention_args.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/paged_kv.cuh"

namespace lserve::cuda::internal {

constexpr float kNegInf = -INFINITY;

struct DecodeArgs : AttentionArgs {
  int num_q_heads;
  const int32_t* selection_begin;
  const int32_t* selection_end;
  const int32_t* selected_pages;
  const int32_t* selection_slot;
  const int32_t* selection_counts;
  int32_t selection_stride;
  int ctas_per_kv_head;  // 1, or the group when query heads may read different pages
  int splits;            // CTAs per dense head (and the partial results' stride)
  int streaming_splits;  // CTAs per streaming head, 1..splits
  // K/V loads may start before the previous kernel ends (it appends only the newest keys,
  // and the selection and tables are older): PagedAttentionParams::selection_settled.
  bool early_loads;
  int page_shift;     // log2(page_size)
  float* partial_o;   // [seq][q head][split][head_dim]
  float* partial_ml;  // [seq][q head][split][2]: running max (log2 units), sum
  int32_t* arrivals;  // [seq][q head]: splits done; the last one combines and resets it
};

// The keys one head pass visits, as a virtual range [0, count): every token, the selected
// pages, or the sink followed by the local window.
struct KeyRange {
  int mode;  // 0 all, 1 selected pages, 2 streaming
  int32_t count;
  int32_t sink_end;      // streaming: tokens [0, sink_end) ...
  int32_t window_start;  // ... then [window_start, len)
  int32_t page_begin;    // selected: selected_pages[page_begin ...] ...
  int32_t listed;        // ... `listed` of them, then the newest page when count is longer
  int32_t newest;
};

// Token v of the range -> (physical page, row). 32-bit index math with shifts (page sizes
// are powers of two, positions below 2^31): this runs for every key of every thread.
__device__ __forceinline__ bool Locate(const DecodeArgs& a, const KeyRange& r, int b, int32_t len,
                                       int32_t v, int32_t dense_first, KvLocation* at) {
  const int shift = a.page_shift;
  const int32_t mask = (1 << shift) - 1;
  if (r.mode == 2) {
    const int32_t pos = v < r.sink_end ? v : r.window_start + (v - r.sink_end);
    const int32_t first = a.t.stream_indptr[b];
    if (pos < a.t.ring_start) {
      *at = {a.t.stream_indices[first + (pos >> shift)], pos & mask};
      return true;
    }
    const int32_t sink = a.t.stream_sink_pages[b];
    const int32_t slots = a.t.stream_indptr[b + 1] - first - sink;
    const int32_t offset = pos - a.t.ring_start;
    *at = {a.t.stream_indices[first + sink + (offset >> shift) % slots], offset & mask};
    return true;
  }
  if (r.mode == 1) {
    const int32_t k = v >> shift;
    const int32_t index = k < r.listed ? a.selected_pages[r.page_begin + k] : r.newest;
    const int32_t row = v & mask;
    if ((index << shift) + row >= len) return false;
    *at = {a.t.dense_indices[dense_first + index], row};
    return true;
  }
  *at = {a.t.dense_indices[dense_first + (v >> shift)], v & mask};
  return true;
}

// The tensor-core decode kernel (paged_decode_mma.cu): head_dim 64 or 128, groups of up
// to 8 query heads per KV head.
absl::Status LaunchDecodeMma(const DecodeArgs& args, cudaStream_t stream);
// CTAs of that kernel resident on one SM.
int DecodeMmaBlocksPerSm(int head_dim);

}  // namespace lserve::cuda::internal

#endif  // LSERVE_KERNELS_CUDA_PAGED_DECODE_CUH_
