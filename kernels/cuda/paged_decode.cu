// Decode attention over paged bf16 KV (flash-decoding): the launcher and its split-K plan.
// The attention kernel (paged_decode_mma.cu) runs one CTA per (split, KV head, sequence),
// reading a slice of the keys once for the whole GQA group when the group reads the same
// pages (else one CTA per query head); the last split to finish combines the splits.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/attention_checks.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/paged_decode.cuh"
#include "kernels/cuda/paged_kv.cuh"

namespace lserve::cuda {
namespace {

using internal::DecodeArgs;

}  // namespace

DecodeLaunch PlanDecode(const PagedAttentionParams& p, int num_sms, int min_split_keys) {
  DecodeLaunch launch;
  // CTAs in one wave of the GPU, and the CTAs of one split.
  const int64_t wave =
      int64_t{std::max(1, num_sms)} * internal::DecodeMmaBlocksPerSm(p.kv.head_dim);
  // Units of work: (sequence, dense KV head), or (sequence, dense query head) when the
  // query heads of a group may read different pages. Streaming heads read the sink and the
  // window only: they count as long units only in a layer without dense heads (or when the
  // pools' head counts are not given); else their CTAs are counted apart.
  const bool per_query_head =
      (p.selection_begin != nullptr || p.selection_slot != nullptr) && !p.selection_per_kv_head;
  const bool counts_given = p.kv.dense.num_heads + p.kv.streaming.num_heads == p.kv.num_kv_heads;
  const int long_kv_heads =
      counts_given && p.kv.dense.num_heads > 0 ? p.kv.dense.num_heads : p.kv.num_kv_heads;
  const int group = p.kv.num_kv_heads > 0 ? p.num_q_heads / p.kv.num_kv_heads : 1;
  const bool dense_present = !counts_given || p.kv.dense.num_heads > 0;
  const int heads = per_query_head && dense_present ? long_kv_heads * group : long_kv_heads;
  const int64_t seqs = std::max(1, p.tables.num_seqs);
  const int64_t units = seqs * std::max(1, heads);
  int64_t keys = p.max_keys > 0 ? p.max_keys : p.tables.max_kv_len;
  if (!dense_present && p.max_streaming_keys > 0) keys = p.max_streaming_keys;
  // Streaming heads beside dense ones, when their range is known to be short.
  const bool streaming_apart = counts_given && dense_present && p.kv.streaming.num_heads > 0 &&
                               p.max_streaming_keys > 0 && keys > 0;
  const int64_t streaming_units = streaming_apart ? seqs * p.kv.streaming.num_heads : 0;
  const int64_t longest = std::clamp<int64_t>(keys / std::max(1, min_split_keys), 1, 128);
  auto streaming_splits = [&](int64_t splits) {
    if (!streaming_apart) return splits;
    const int64_t chunk = (keys + splits - 1) / splits;
    return std::clamp<int64_t>((p.max_streaming_keys + chunk - 1) / chunk, 1, splits);
  };
  // The fewest splits whose last wave is nearly full (the wave efficiency of FA3's
  // heuristic): efficiency = CTAs / (waves * wave), at least 0.9 of the best.
  auto efficiency = [&](int64_t splits) {
    const int64_t ctas = units * splits + streaming_units * streaming_splits(splits);
    return static_cast<double>(ctas) / (static_cast<double>((ctas + wave - 1) / wave) * wave);
  };
  double best = 0.0;
  for (int64_t s = 1; s <= longest; ++s) best = std::max(best, efficiency(s));
  launch.splits = static_cast<int>(longest);
  for (int64_t s = 1; s <= longest; ++s) {
    if (efficiency(s) >= 0.9 * best) {
      launch.splits = static_cast<int>(s);
      break;
    }
  }
  launch.streaming_splits = static_cast<int>(streaming_splits(launch.splits));
  if (launch.splits > 1) {
    // Partial results, then one arrival counter per (sequence, query head).
    launch.workspace_bytes = sizeof(float) * static_cast<size_t>(p.tables.num_seqs) *
                             p.num_q_heads * (launch.splits * (p.kv.head_dim + 2) + 1);
  }
  return launch;
}

absl::Status PagedDecodeAttention(const PagedAttentionParams& p, const DecodeLaunch& launch,
                                  void* workspace, void* stream) {
  RETURN_IF_ERROR(internal::CheckAttentionShape(p, "decode attention", 8));
  if (p.kv.page_size <= 0 || (p.kv.page_size & (p.kv.page_size - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cuda decode attention: page_size ",
                                                   p.kv.page_size, " is not a power of two"));
  }
  if (p.tables.max_queries != 1) {
    return absl::InvalidArgumentError(
        "cuda decode attention takes one query row per sequence (tables.max_queries == 1)");
  }
  if (launch.splits < 1 || (launch.splits > 1 && workspace == nullptr)) {
    return absl::InvalidArgumentError("cuda decode attention: split-K needs a workspace");
  }
  if (p.tables.num_seqs == 0) return absl::OkStatus();
  DecodeArgs args{};
  internal::SetAttentionArgs(p, &args);
  args.num_q_heads = p.num_q_heads;
  args.selection_begin = p.selection_begin;
  args.selection_end = p.selection_end;
  args.selected_pages = p.selected_pages;
  args.selection_slot = p.selection_slot;
  args.selection_counts = p.selection_counts;
  args.selection_stride = p.selection_stride;
  const bool any_selection = p.selection_begin != nullptr || p.selection_slot != nullptr;
  args.ctas_per_kv_head = any_selection && !p.selection_per_kv_head ? args.group : 1;
  args.splits = launch.splits;
  args.streaming_splits = launch.streaming_splits > 0
                              ? std::min(launch.streaming_splits, launch.splits)
                              : launch.splits;
  args.page_shift = __builtin_ctz(static_cast<unsigned>(p.kv.page_size));
  args.early_loads = p.selection_settled;
  if (launch.splits > 1) {
    args.partial_o = static_cast<float*>(workspace);
    const size_t heads = static_cast<size_t>(p.tables.num_seqs) * p.num_q_heads;
    args.partial_ml = args.partial_o + heads * launch.splits * p.kv.head_dim;
    args.arrivals = reinterpret_cast<int32_t*>(args.partial_ml + heads * launch.splits * 2);
  }
  return internal::LaunchDecodeMma(args, internal::AsStream(stream));
}

}  // namespace lserve::cuda
