// Decode attention over paged bf16 KV (flash-decoding): one CTA per (split, KV head,
// sequence) reads a slice of the keys its query heads see, once for the whole GQA group
// when the group reads the same pages (else one CTA per query head), streaming the keys
// through a cp.async pipeline and keeping a float32 online softmax per token slot; slots
// merge in shared memory, splits in a combine kernel.
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
constexpr int kUnroll = 2;  // tokens per slot and tile
constexpr int kStages = 8;  // tiles in flight
constexpr int kPipelineBytes = kStages * kUnroll * 2 * kThreads * 16;
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
  int page_shift;     // log2(page_size)
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

__device__ __forceinline__ void CpAsync16(void* shared, const void* global, int bytes) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global),
               "r"(bytes));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

// The keys one head pass visits, as a virtual range [0, count): every token, the selected
// pages, or the sink followed by the local window.
struct KeyRange {
  int mode;  // 0 all, 1 selected pages, 2 streaming
  int32_t count;
  int32_t sink_end;      // streaming: tokens [0, sink_end) ...
  int32_t window_start;  // ... then [window_start, len)
  int32_t page_begin;    // selected: selected_pages[page_begin ...]
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
    const int32_t index = a.selected_pages[r.page_begin + (v >> shift)];
    const int32_t row = v & mask;
    if ((index << shift) + row >= len) return false;
    *at = {a.t.dense_indices[dense_first + index], row};
    return true;
  }
  *at = {a.t.dense_indices[dense_first + (v >> shift)], v & mask};
  return true;
}

__host__ __device__ constexpr int kSlotsFor(int head_dim) { return kWarps * (32 / (head_dim / 8)); }

template <int kHeadDim, int kGroup>
__global__ void __launch_bounds__(kThreads, kGroup > 4 ? 2 : 3) DecodeKernel(DecodeArgs a) {
  constexpr int kThreadsPerToken = kHeadDim / 8;
  constexpr int kTokensPerWarp = 32 / kThreadsPerToken;
  constexpr int kSlots = kSlotsFor(kHeadDim);
  static_assert(kSlots == kWarps * kTokensPerWarp);
  extern __shared__ uint4 pipeline[];  // [kStages][kUnroll][K, V][kThreads]
  // After the key loop the same memory merges the token slots.
  auto slot_max = reinterpret_cast<float(*)[kGroup]>(pipeline);
  auto slot_sum =
      reinterpret_cast<float(*)[kGroup]>(reinterpret_cast<float*>(pipeline) + kSlots * kGroup);
  auto slot_acc = reinterpret_cast<float(*)[kGroup][kHeadDim]>(reinterpret_cast<float*>(pipeline) +
                                                               2 * kSlots * kGroup);

  const int split = blockIdx.x;
  // blockIdx.y = (KV head, query head of its group): a group that reads the same pages
  // runs in the group's first CTA, otherwise each query head in its own.
  const int kv_head = blockIdx.y / a.group;
  const int own_head = blockIdx.y % a.group;
  const int b = blockIdx.z;
  const int lane = threadIdx.x & 31;
  const int token_slot = (threadIdx.x >> 5) * kTokensPerWarp + lane / kThreadsPerToken;
  const int sub = lane % kThreadsPerToken;
  const bool streaming = a.kv.kv_head_streaming[kv_head] != 0;
  const int slot = a.kv.kv_head_slot[kv_head];
  const KvPoolView& pool = streaming ? a.kv.streaming : a.kv.dense;
  const int64_t value_offset = internal::ValueOffset(pool, a.kv.page_size, kHeadDim);
  const int32_t len = a.t.kv_len[b];
  const int32_t dense_first = a.t.dense_indptr[b];
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
  if (shared && own_head != 0) return;
  for (int pass = shared ? 0 : own_head; pass < (shared ? 1 : own_head + 1); ++pass) {
    KeyRange range{0, len, 0, 0, 0};
    if (streaming) {
      range.mode = 2;
      range.sink_end = static_cast<int32_t>(min(a.sink, int64_t{len}));
      range.window_start = max(range.sink_end, len - a.local[b]);
      range.count = range.sink_end + (len - range.window_start);
    } else if (selected) {
      range.mode = 1;
      range.page_begin = a.selection_begin[sel + pass];
      range.count = (a.selection_end[sel + pass] - range.page_begin) << a.page_shift;
    }
    const int32_t chunk = (range.count + a.splits - 1) / a.splits;
    const int32_t begin = split * chunk;
    const int32_t end = min(range.count, begin + chunk);

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

    // A pipeline of kStages tiles in flight: each thread copies (cp.async) exactly the
    // 16-byte pieces it later reads, so only its own copies need waiting for.
    constexpr int kTile = kSlots * kUnroll;
    const int32_t tiles = end > begin ? (end - begin + kTile - 1) / kTile : 0;
    uint32_t valid_bits = 0;
    auto issue = [&](int32_t tile) {
      const int stage = static_cast<int>(tile % kStages);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int32_t v = begin + tile * kTile + u * kSlots + token_slot;
        KvLocation at{0, 0};
        const bool valid = v < end && Locate(a, range, b, len, v, dense_first, &at);
        const uint16_t* key =
            valid ? internal::KeyRow(pool, at, slot, a.kv.page_size, kHeadDim) + sub * 8 : a.q;
        uint4* dst = pipeline + ((stage * kUnroll + u) * 2) * kThreads + threadIdx.x;
        CpAsync16(dst, key, valid ? 16 : 0);
        CpAsync16(dst + kThreads, valid ? key + value_offset : a.q, valid ? 16 : 0);
        const uint32_t bit = 1u << (stage * kUnroll + u);
        valid_bits = valid ? (valid_bits | bit) : (valid_bits & ~bit);
      }
    };
    for (int s = 0; s < kStages - 1; ++s) {
      if (s < tiles) issue(s);
      CpAsyncCommit();
    }
    for (int32_t tile = 0; tile < tiles; ++tile) {
      CpAsyncWait<kStages - 2>();
      const int stage = static_cast<int>(tile % kStages);
      uint4 k_raw[kUnroll];
      uint4 v_raw[kUnroll];
      bool valid[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const uint4* src = pipeline + ((stage * kUnroll + u) * 2) * kThreads + threadIdx.x;
        k_raw[u] = src[0];
        v_raw[u] = src[kThreads];
        valid[u] = (valid_bits >> (stage * kUnroll + u)) & 1u;
      }
      if (tile + kStages - 1 < tiles) issue(tile + kStages - 1);
      CpAsyncCommit();
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
    CpAsyncWait<0>();
    __syncthreads();
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
  static_assert(kSlotsFor(kHeadDim) * kGroup * (kHeadDim + 2) * 4 <= kPipelineBytes);
  static const cudaError_t configured = cudaFuncSetAttribute(
      DecodeKernel<kHeadDim, kGroup>, cudaFuncAttributeMaxDynamicSharedMemorySize, kPipelineBytes);
  RETURN_IF_ERROR(internal::CudaStatus(configured, "configuring DecodeKernel"));
  const dim3 grid(args.splits, args.kv.num_kv_heads * args.group, args.t.num_seqs);
  DecodeKernel<kHeadDim, kGroup><<<grid, kThreads, kPipelineBytes, stream>>>(args);
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
  const int64_t keys = p.max_keys > 0 ? p.max_keys : p.tables.max_kv_len;
  const int64_t longest = std::max<int64_t>(1, keys / kMinKeysPerSplit);
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
  return p.kv.head_dim == 128 ? LaunchForGroup<128>(args, s) : LaunchForGroup<64>(args, s);
}

}  // namespace lserve::cuda
