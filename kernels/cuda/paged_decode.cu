// Decode attention over paged bf16 KV (flash-decoding): one CTA per (split, KV head,
// sequence) reads a slice of the keys its query heads see, once for the whole GQA group
// when the group reads the same pages, and keeps a float32 online softmax per token slot;
// slots merge in shared memory, splits in a combine kernel.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/bf16_vec.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/paged_kv.cuh"

namespace lserve::cuda {
namespace {

using internal::CheckLaunch;
using internal::KvLocation;

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kUnroll = 4;  // tokens per slot in flight
constexpr int kMinKeysPerSplit = 256;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kNegInf = -INFINITY;

struct DecodeArgs {
  PagedKvLayer kv;
  PageTableView t;
  const int32_t* q_indptr;
  const uint16_t* q;
  uint16_t* out;
  int64_t q_row_stride;
  int64_t out_row_stride;
  int num_q_heads;
  int group;
  float scale_log2;
  int64_t sink;
  const int32_t* local;
  const int32_t* selection_begin;
  const int32_t* selection_end;
  const int32_t* selected_pages;
  int splits;
  float* partial_o;   // [seq][q head][split][head_dim]
  float* partial_ml;  // [seq][q head][split][2]: running max (log2 units), sum
};

__device__ __forceinline__ void Unpack(const uint4& raw, float (&f)[8]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int w = 0; w < 4; ++w) {
    f[2 * w] = __uint_as_float(words[w] << 16);
    f[2 * w + 1] = __uint_as_float(words[w] & 0xFFFF0000u);
  }
}

// The keys one head pass visits, as a virtual range [0, count): every token, the selected
// pages, or the sink followed by the local window.
struct KeyRange {
  int mode;  // 0 all, 1 selected pages, 2 streaming
  int64_t count;
  int64_t sink_end;      // streaming: tokens [0, sink_end) ...
  int64_t window_start;  // ... then [window_start, len)
  int32_t page_begin;    // selected: selected_pages[page_begin ...]
};

__device__ __forceinline__ bool Locate(const DecodeArgs& a, const KeyRange& r, int b, int64_t len,
                                       int64_t v, KvLocation* at) {
  const int page_size = a.kv.page_size;
  if (r.mode == 2) {
    const int64_t pos = v < r.sink_end ? v : r.window_start + (v - r.sink_end);
    *at = internal::StreamingLocation(a.t, page_size, b, pos);
    return true;
  }
  if (r.mode == 1) {
    const int32_t index = a.selected_pages[r.page_begin + v / page_size];
    const int32_t row = static_cast<int32_t>(v % page_size);
    if (int64_t{index} * page_size + row >= len) return false;
    *at = {a.t.dense_indices[a.t.dense_indptr[b] + index], row};
    return true;
  }
  *at = internal::DenseLocation(a.t, page_size, b, v);
  return true;
}

template <int kHeadDim, int kGroup>
__global__ void __launch_bounds__(kThreads) DecodeKernel(DecodeArgs a) {
  constexpr int kThreadsPerToken = kHeadDim / 8;
  constexpr int kTokensPerWarp = 32 / kThreadsPerToken;
  constexpr int kSlots = kWarps * kTokensPerWarp;
  __shared__ float slot_max[kSlots][kGroup];
  __shared__ float slot_sum[kSlots][kGroup];
  __shared__ float slot_acc[kSlots][kGroup][kHeadDim];

  const int split = blockIdx.x;
  const int kv_head = blockIdx.y;
  const int b = blockIdx.z;
  const int lane = threadIdx.x & 31;
  const int token_slot = (threadIdx.x >> 5) * kTokensPerWarp + lane / kThreadsPerToken;
  const int sub = lane % kThreadsPerToken;
  const bool streaming = a.kv.kv_head_streaming[kv_head] != 0;
  const int slot = a.kv.kv_head_slot[kv_head];
  const KvPoolView& pool = streaming ? a.kv.streaming : a.kv.dense;
  const int64_t value_offset = internal::ValueOffset(pool, a.kv.page_size, kHeadDim);
  const int64_t len = a.t.kv_len[b];
  const int64_t row = a.q_indptr[b + 1] - 1;
  const int first_q = kv_head * a.group;
  const int64_t sel = int64_t{b} * a.num_q_heads + first_q;
  const bool selected = !streaming && a.selection_begin != nullptr && a.selection_begin[sel] >= 0;
  // The group shares its loads unless its heads selected different pages.
  bool shared = true;
  if (selected) {
    for (int g = 1; g < a.group; ++g) {
      shared = shared && a.selection_begin[sel + g] == a.selection_begin[sel] &&
               a.selection_end[sel + g] == a.selection_end[sel];
    }
  }
  const int passes = shared ? 1 : a.group;
  for (int pass = 0; pass < passes; ++pass) {
    KeyRange range{0, len, 0, 0, 0};
    if (streaming) {
      range.mode = 2;
      range.sink_end = min(a.sink, len);
      range.window_start = max(range.sink_end, len - a.local[b]);
      range.count = range.sink_end + (len - range.window_start);
    } else if (selected) {
      range.mode = 1;
      range.page_begin = a.selection_begin[sel + pass];
      range.count = int64_t{a.selection_end[sel + pass] - range.page_begin} * a.kv.page_size;
    }
    const int64_t chunk = (range.count + a.splits - 1) / a.splits;
    const int64_t begin = split * chunk;
    const int64_t end = min(range.count, begin + chunk);

    float q[kGroup][8];
    float acc[kGroup][8];
    float running_max[kGroup];
    float running_sum[kGroup];
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      const bool active = g < a.group && (shared || g == pass);
      if (active) {
        float raw[8];
        internal::LoadBf16<8>(
            a.q + row * a.q_row_stride + int64_t{first_q + g} * kHeadDim + sub * 8, raw);
#pragma unroll
        for (int c = 0; c < 8; ++c) q[g][c] = raw[c] * a.scale_log2;
      } else {
#pragma unroll
        for (int c = 0; c < 8; ++c) q[g][c] = 0.0f;
      }
#pragma unroll
      for (int c = 0; c < 8; ++c) acc[g][c] = 0.0f;
      running_max[g] = kNegInf;
      running_sum[g] = 0.0f;
    }

    for (int64_t base = begin; base < end; base += kSlots * kUnroll) {
      uint4 k_raw[kUnroll];
      uint4 v_raw[kUnroll];
      bool valid[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t v = base + u * kSlots + token_slot;
        KvLocation at{0, 0};
        valid[u] = v < end && Locate(a, range, b, len, v, &at);
        if (valid[u]) {
          const uint16_t* key =
              internal::KeyRow(pool, at, slot, a.kv.page_size, kHeadDim) + sub * 8;
          k_raw[u] = __ldg(reinterpret_cast<const uint4*>(key));
          v_raw[u] = __ldg(reinterpret_cast<const uint4*>(key + value_offset));
        } else {
          k_raw[u] = make_uint4(0, 0, 0, 0);
          v_raw[u] = make_uint4(0, 0, 0, 0);
        }
      }
      float score[kUnroll][kGroup];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        float k[8];
        Unpack(k_raw[u], k);
#pragma unroll
        for (int g = 0; g < kGroup; ++g) {
          float dot = 0.0f;
#pragma unroll
          for (int c = 0; c < 8; ++c) dot = fmaf(q[g][c], k[c], dot);
#pragma unroll
          for (int offset = kThreadsPerToken / 2; offset > 0; offset >>= 1) {
            dot += __shfl_xor_sync(0xFFFFFFFFu, dot, offset);
          }
          score[u][g] = valid[u] ? dot : kNegInf;
        }
      }
#pragma unroll
      for (int g = 0; g < kGroup; ++g) {
        float block_max = score[0][g];
#pragma unroll
        for (int u = 1; u < kUnroll; ++u) block_max = fmaxf(block_max, score[u][g]);
        const float new_max = fmaxf(running_max[g], block_max);
        if (new_max == kNegInf) continue;
        const float correction = exp2f(running_max[g] - new_max);  // exp2(-inf) = 0
        float p[kUnroll];
        float sum = 0.0f;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          p[u] = exp2f(score[u][g] - new_max);
          sum += p[u];
        }
        running_sum[g] = running_sum[g] * correction + sum;
        running_max[g] = new_max;
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[g][c] *= correction;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          float v[8];
          Unpack(v_raw[u], v);
#pragma unroll
          for (int c = 0; c < 8; ++c) acc[g][c] = fmaf(p[u], v[c], acc[g][c]);
        }
      }
    }

    // Merge the token slots.
#pragma unroll
    for (int g = 0; g < kGroup; ++g) {
      if (sub == 0) {
        slot_max[token_slot][g] = running_max[g];
        slot_sum[token_slot][g] = running_sum[g];
      }
#pragma unroll
      for (int c = 0; c < 8; ++c) slot_acc[token_slot][g][sub * 8 + c] = acc[g][c];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < kGroup * kHeadDim; i += kThreads) {
      const int g = i / kHeadDim;
      const int c = i % kHeadDim;
      if (g >= a.group || !(shared || g == pass)) continue;
      float merged_max = kNegInf;
      for (int s = 0; s < kSlots; ++s) merged_max = fmaxf(merged_max, slot_max[s][g]);
      float sum = 0.0f;
      float out = 0.0f;
      if (merged_max != kNegInf) {
        for (int s = 0; s < kSlots; ++s) {
          if (slot_max[s][g] == kNegInf) continue;
          const float w = exp2f(slot_max[s][g] - merged_max);
          sum += w * slot_sum[s][g];
          out += w * slot_acc[s][g][c];
        }
      }
      const int h = first_q + g;
      if (a.splits == 1) {
        a.out[row * a.out_row_stride + int64_t{h} * kHeadDim + c] =
            internal::FloatToBf16(sum > 0.0f ? out / sum : 0.0f);
      } else {
        const int64_t part = (int64_t{b} * a.num_q_heads + h) * a.splits + split;
        a.partial_o[part * kHeadDim + c] = out;
        if (c == 0) {
          a.partial_ml[2 * part] = merged_max;
          a.partial_ml[2 * part + 1] = sum;
        }
      }
    }
    __syncthreads();
  }
}

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

template <int kHeadDim, int kGroup>
absl::Status Launch(const DecodeArgs& args, cudaStream_t stream) {
  const dim3 grid(args.splits, args.kv.num_kv_heads, args.t.num_seqs);
  DecodeKernel<kHeadDim, kGroup><<<grid, kThreads, 0, stream>>>(args);
  RETURN_IF_ERROR(CheckLaunch("DecodeKernel"));
  if (args.splits == 1) return absl::OkStatus();
  CombineKernel<kHeadDim><<<dim3(args.num_q_heads, args.t.num_seqs), kHeadDim, 0, stream>>>(args);
  return CheckLaunch("CombineKernel");
}

template <int kHeadDim>
absl::Status LaunchForGroup(const DecodeArgs& args, cudaStream_t stream) {
  if (args.group == 1) return Launch<kHeadDim, 1>(args, stream);
  if (args.group == 2) return Launch<kHeadDim, 2>(args, stream);
  if (args.group <= 4) return Launch<kHeadDim, 4>(args, stream);
  return Launch<kHeadDim, 8>(args, stream);
}

}  // namespace

DecodeLaunch PlanDecode(const PagedAttentionParams& p, int num_sms) {
  DecodeLaunch launch;
  const int64_t units = int64_t{std::max(1, p.tables.num_seqs)} * std::max(1, p.kv.num_kv_heads);
  const int64_t wanted = (4 * int64_t{std::max(1, num_sms)} + units - 1) / units;
  const int64_t longest = std::max<int64_t>(1, p.tables.max_kv_len / kMinKeysPerSplit);
  launch.splits = static_cast<int>(std::clamp<int64_t>(std::min(wanted, longest), 1, 128));
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
  if (launch.splits > 1) {
    args.partial_o = static_cast<float*>(workspace);
    args.partial_ml = args.partial_o + static_cast<size_t>(p.tables.num_seqs) * p.num_q_heads *
                                           launch.splits * p.kv.head_dim;
  }
  cudaStream_t s = internal::AsStream(stream);
  return p.kv.head_dim == 128 ? LaunchForGroup<128>(args, s) : LaunchForGroup<64>(args, s);
}

}  // namespace lserve::cuda
