// Decode attention over paged bf16 KV (flash-decoding): the launcher, its split-K plan and
// the combine kernel. The attention kernel (paged_decode_mma.cu) runs one CTA per (split,
// KV head, sequence), reading a slice of the keys once for the whole GQA group when the
// group reads the same pages (else one CTA per query head).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/paged_decode.cuh"
#include "kernels/cuda/paged_kv.cuh"

namespace lserve::cuda {
namespace {

using internal::CheckLaunch;
using internal::DecodeArgs;

constexpr int kMinKeysPerSplit = 256;
constexpr float kLog2e = 1.4426950408889634f;
using internal::kNegInf;

// One block per (query head, sequence): weights the splits by exp2(max_i - max).
template <int kHeadDim>
__global__ void CombineKernel(DecodeArgs a) {
  const int h = blockIdx.x;
  const int b = blockIdx.y;
  const int c = threadIdx.x;
  const int64_t first = (int64_t{b} * a.num_q_heads + h) * a.splits;
  float merged_max = kNegInf;
  for (int s = 0; s < a.splits; ++s) merged_max = fmaxf(merged_max, a.partial_ml[2 * (first + s)]);
  float sum = 0.0f;
  float out = 0.0f;
  if (merged_max != kNegInf) {
    for (int s = 0; s < a.splits; ++s) {
      const float m = a.partial_ml[2 * (first + s)];
      if (m == kNegInf) continue;
      const float w = exp2f(m - merged_max);
      sum += w * a.partial_ml[2 * (first + s) + 1];
      out += w * a.partial_o[(first + s) * kHeadDim + c];
    }
  }
  const int64_t row = a.q_indptr[b + 1] - 1;
  a.out[row * a.out_row_stride + int64_t{h} * kHeadDim + c] =
      internal::FloatToBf16(sum > 0.0f ? out / sum : 0.0f);
}

template <int kHeadDim>
absl::Status Launch(const DecodeArgs& args, cudaStream_t stream) {
  RETURN_IF_ERROR(internal::LaunchDecodeMma(args, stream));
  if (args.splits == 1) return absl::OkStatus();
  CombineKernel<kHeadDim><<<dim3(args.num_q_heads, args.t.num_seqs), kHeadDim, 0, stream>>>(args);
  return CheckLaunch("CombineKernel");
}

}  // namespace

DecodeLaunch PlanDecode(const PagedAttentionParams& p, int num_sms) {
  DecodeLaunch launch;
  // CTAs in one wave of the GPU, and the CTAs of one split.
  const int64_t wave =
      int64_t{std::max(1, num_sms)} * internal::DecodeMmaBlocksPerSm(p.kv.head_dim);
  const int64_t units = int64_t{std::max(1, p.tables.num_seqs)} * std::max(1, p.kv.num_kv_heads);
  const int64_t keys = p.max_keys > 0 ? p.max_keys : p.tables.max_kv_len;
  const int64_t longest = std::clamp<int64_t>(keys / kMinKeysPerSplit, 1, 128);
  // The fewest splits whose last wave is nearly full (the wave efficiency of FA3's
  // heuristic): efficiency = CTAs / (waves * wave), at least 0.9 of the best.
  auto efficiency = [&](int64_t splits) {
    const int64_t ctas = units * splits;
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
  if (launch.splits > 1) {
    launch.workspace_bytes = sizeof(float) * static_cast<size_t>(p.tables.num_seqs) *
                             p.num_q_heads * launch.splits * (p.kv.head_dim + 2);
  }
  return launch;
}

absl::Status PagedDecodeAttention(const PagedAttentionParams& p, const DecodeLaunch& launch,
                                  void* workspace, void* stream) {
  if (p.kv.dtype != DType::kBF16) {
    return absl::InvalidArgumentError("cuda decode attention reads bf16 pools only");
  }
  if (p.kv.head_dim != 64 && p.kv.head_dim != 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda decode attention: head_dim ", p.kv.head_dim, " (64 or 128 only)"));
  }
  if (p.kv.num_kv_heads <= 0 || p.num_q_heads % p.kv.num_kv_heads != 0 ||
      p.num_q_heads / p.kv.num_kv_heads > 8) {
    return absl::InvalidArgumentError(absl::StrCat("cuda decode attention: ", p.num_q_heads,
                                                   " query heads over ", p.kv.num_kv_heads,
                                                   " KV heads (groups of 1 to 8)"));
  }
  if (p.kv.page_size <= 0 || (p.kv.page_size & (p.kv.page_size - 1)) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("cuda decode attention: page_size ",
                                                   p.kv.page_size, " is not a power of two"));
  }
  if (p.tables.max_queries != 1) {
    return absl::InvalidArgumentError(
        "cuda decode attention takes one query row per sequence (tables.max_queries == 1)");
  }
  if (p.q_row_stride % 8 != 0 || !internal::IsAligned16(p.q)) {
    return absl::InvalidArgumentError("cuda decode attention: q rows must be 16-byte aligned");
  }
  if (launch.splits < 1 || (launch.splits > 1 && workspace == nullptr)) {
    return absl::InvalidArgumentError("cuda decode attention: split-K needs a workspace");
  }
  if (p.tables.num_seqs == 0) return absl::OkStatus();
  DecodeArgs args{};
  args.kv = p.kv;
  args.t = p.tables;
  args.q_indptr = p.q_indptr;
  args.q = static_cast<const uint16_t*>(p.q);
  args.out = static_cast<uint16_t*>(p.out);
  args.q_row_stride = p.q_row_stride;
  args.out_row_stride = p.out_row_stride;
  args.num_q_heads = p.num_q_heads;
  args.group = p.num_q_heads / p.kv.num_kv_heads;
  args.scale_log2 = p.scale * kLog2e;
  args.sink = p.sink;
  args.local = p.local;
  args.selection_begin = p.selection_begin;
  args.selection_end = p.selection_end;
  args.selected_pages = p.selected_pages;
  args.splits = launch.splits;
  args.page_shift = __builtin_ctz(static_cast<unsigned>(p.kv.page_size));
  if (launch.splits > 1) {
    args.partial_o = static_cast<float*>(workspace);
    args.partial_ml = args.partial_o + static_cast<size_t>(p.tables.num_seqs) * p.num_q_heads *
                                           launch.splits * p.kv.head_dim;
  }
  cudaStream_t s = internal::AsStream(stream);
  return p.kv.head_dim == 128 ? Launch<128>(args, s) : Launch<64>(args, s);
}

}  // namespace lserve::cuda
