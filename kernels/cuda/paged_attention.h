// Paged KV ops of the CUDA backend's decode path (DESIGN.md §3): the KV append fused with
// the page statistics, decode attention over the page tables with split-K, page scoring
// and top-k page selection. Pools are bf16 in kvstore/kv_pool.h's layout; queries and
// outputs bf16; math in float32. Params are the shared structs of
// kernels/attention_params.h; streams travel as `void*` (see norm_activation.h). All
// pointers are device pointers except AttentionStats. Nothing here reads device memory
// from the host, so a decode step can be captured in a CUDA graph.
#ifndef LSERVE_KERNELS_CUDA_PAGED_ATTENTION_H_
#define LSERVE_KERNELS_CUDA_PAGED_ATTENTION_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kernels/attention_params.h"

namespace lserve::cuda {

// Writes every row's K and V into its pool; for each logical page of a dense head that
// received keys, the new keys are folded into its kmax/kmin in row order (a logical page's
// first key starting afresh), which equals a recomputation over the keys it holds.
absl::Status AppendKv(const AppendKvParams& params, void* stream);
// RoPE of q and k fused into the append (Backend::RopeAppendKv), one launch; layouts it
// cannot fuse (head_dim not a multiple of 16, unaligned rows) run as three.
absl::Status RopeAppendKv(const RopeAppendKvParams& params, void* stream);

// Split-K plan of a decode launch: `splits` CTAs share each (sequence, KV head) and
// workspace_bytes of float32 scratch hold their partial results (0 when splits == 1).
struct DecodeLaunch {
  int splits = 1;
  // CTAs sharing each streaming KV head's range (sink and window), at most `splits`; 0:
  // `splits`.
  int streaming_splits = 0;
  size_t workspace_bytes = 0;
};
// Chooses the split count from the work: enough CTAs to fill `num_sms` SMs a few times
// over, each split at least `min_split_keys` keys long. Uses the host hints
// params.max_keys or params.tables.max_kv_len, and the pools' head counts
// (params.kv.dense.num_heads, params.kv.streaming.num_heads): the dense heads' long
// ranges set the split count, and with params.max_streaming_keys the streaming heads'
// short ranges get only as many splits as make them about as long as a dense split.
inline constexpr int kDecodeMinSplitKeys = 128;
DecodeLaunch PlanDecode(const PagedAttentionParams& params, int num_sms,
                        int min_split_keys = kDecodeMinSplitKeys);

// Decode attention: every sequence has one query row (params.tables.max_queries must be
// 1). Dense heads read every page, or the selected pages when a selection is set;
// streaming heads read the sink and the local window through the ring. The query heads
// of a KV head share each K/V load whenever they read the same pages; the selection may
// come in either form of PagedAttentionParams. The splits combine in the same launch.
// `workspace` holds launch.workspace_bytes and must be zeroed before its first use (its
// arrival counters return to zero after every launch). params.stats is not updated.
absl::Status PagedDecodeAttention(const PagedAttentionParams& params, const DecodeLaunch& launch,
                                  void* workspace, void* stream);

// Prefill attention (causal, many rows per sequence; chunks attend to their earlier pages
// and to themselves): dense heads over every earlier key, streaming heads over the sink
// and the local window, visiting only the key tiles PlanKeyTiles (prefill_plan.h) lists.
// One launch for the batch; persistent CTAs, at most num_sms times the resident count.
// Needs params.tables.max_queries; no page selection. `workspace` holds
// kPrefillWorkspaceBytes, zeroed before its first use (the kernel leaves it zeroed).
// params.stats is not updated (the host computes tiles from prefill_plan.h).
// Two kernels implement it: kWgmma (paged_prefill_sm90.cu: warp-specialized wgmma, for
// compute capability 9.0 built as sm_90a) and kMmaSync (paged_prefill.cu: mma.sync,
// sm_80 and later). kAuto takes kWgmma where the device supports it, unless the
// environment sets LSERVE_PREFILL_KERNEL=mma_sync; asking for kWgmma elsewhere is
// FAILED_PRECONDITION.
inline constexpr size_t kPrefillWorkspaceBytes = 16;
enum class PrefillKernel { kAuto, kMmaSync, kWgmma };
absl::Status PagedPrefillAttention(const PagedAttentionParams& params, void* workspace, int num_sms,
                                   void* stream, PrefillKernel kernel = PrefillKernel::kAuto);
// The kernel kAuto runs on the current device, and the tiles a kernel works in: query
// rows (tokens x the GQA group's heads) and keys, for tile accounting with prefill_plan.h.
PrefillKernel ResolvePrefillKernel(PrefillKernel kernel);
struct PrefillTileShape {
  int rows = 0;
  int keys = 0;
};
PrefillTileShape PrefillTiles(PrefillKernel kernel);

// Page scores as cpu::ScorePages defines them, summed in the same order with the same
// float32 roundings, so the scores (and the selections made from them) are bitwise those
// of the CPU backend on the same values. Uses params.tables.max_kv_len to size the grid.
absl::Status ScorePages(const ScorePagesParams& params, void* stream);

// Top-k page selection per job on the GPU (radix select over the score bits, ties to the
// lower index), equal to cpu::SelectPages.
absl::Status SelectPages(const SelectPagesParams& params, void* stream);

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_PAGED_ATTENTION_H_
