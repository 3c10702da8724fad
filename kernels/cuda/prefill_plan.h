// Loop bounds of block-sparse causal prefill attention (DESIGN.md §3): which key tiles a
// query tile visits, and which of them need a token-exact mask. The kernels and the
// host-side tile accounting call the same functions, so "tiles visited" is what the
// kernels do. Plain C++ usable from host and device code, no CUDA types.
#ifndef LSERVE_KERNELS_CUDA_PREFILL_PLAN_H_
#define LSERVE_KERNELS_CUDA_PREFILL_PLAN_H_

#include <cstdint>

#include "kernels/host_device.h"

namespace lserve::cuda {

// The key tiles (of tile_keys keys each, tile t holding keys [t * tile_keys, ...)) that
// query positions [first_pos, last_pos] visit, as up to two runs in increasing order:
// [0, sink_end) then [window_begin, window_end). A dense head sees every key j <= its
// position; a streaming head sees j <= p with j < sink or j > p - local (the Λ pattern).
struct KeyTileRuns {
  int32_t sink_end = 0;
  int32_t window_begin = 0;
  int32_t window_end = 0;

  LSERVE_HOST_DEVICE int32_t count() const { return sink_end + (window_end - window_begin); }
  // The i-th tile visited, i < count().
  LSERVE_HOST_DEVICE int32_t tile(int32_t i) const {
    return i < sink_end ? i : window_begin + (i - sink_end);
  }
};

LSERVE_HOST_DEVICE inline int64_t FloorDiv(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}

LSERVE_HOST_DEVICE inline KeyTileRuns PlanKeyTiles(bool streaming, int64_t first_pos,
                                                   int64_t last_pos, int64_t sink, int64_t local,
                                                   int32_t tile_keys) {
  KeyTileRuns runs;
  const int32_t last_tile = static_cast<int32_t>(last_pos / tile_keys);
  if (!streaming) {
    runs.window_end = last_tile + 1;
    return runs;
  }
  // Sink keys any query of the tile sees: j < min(sink, last_pos + 1).
  const int64_t sink_keys = sink < last_pos + 1 ? sink : last_pos + 1;
  int32_t sink_end = static_cast<int32_t>((sink_keys + tile_keys - 1) / tile_keys);
  // Window keys: first_pos - local < j <= last_pos.
  const int64_t window_first_key = first_pos - local + 1 > 0 ? first_pos - local + 1 : 0;
  int32_t window_begin = static_cast<int32_t>(FloorDiv(window_first_key, tile_keys));
  if (window_begin <= sink_end) {  // the runs touch or overlap: one run from tile 0
    runs.window_end = last_tile + 1;
    return runs;
  }
  runs.sink_end = sink_end;
  runs.window_begin = window_begin;
  runs.window_end = last_tile + 1;
  return runs;
}

// Whether key tile `tile` needs a per-element mask for query positions
// [first_pos, last_pos]: false only when every (query, key) pair of the tile is visible.
LSERVE_HOST_DEVICE inline bool KeyTileNeedsMask(bool streaming, int64_t first_pos, int64_t last_pos,
                                                int64_t sink, int64_t local, int32_t tile_keys,
                                                int32_t tile) {
  const int64_t first_key = int64_t{tile} * tile_keys;
  const int64_t last_key = first_key + tile_keys - 1;
  if (last_key > first_pos) return true;  // the causal diagonal
  if (!streaming) return false;
  // Some key of the tile is neither in the sink nor in every query's window: one in
  // [sink, last_pos - local] (the window of last_pos starts latest).
  const int64_t gap_first = first_key > sink ? first_key : sink;
  const int64_t gap_last = last_key < last_pos - local ? last_key : last_pos - local;
  return gap_first <= gap_last;
}

// Element visibility, the definition both functions above are derived from.
LSERVE_HOST_DEVICE inline bool KeyVisible(bool streaming, int64_t pos, int64_t key, int64_t sink,
                                          int64_t local) {
  return key <= pos && (!streaming || key < sink || key > pos - local);
}

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_PREFILL_PLAN_H_
