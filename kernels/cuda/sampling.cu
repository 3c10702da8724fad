// Token sampling on the GPU, one block per row, drawing from the distribution the CPU
// sampler (kernels/cpu/sampling.cc) defines: greedy is the argmax (lowest id on ties);
// otherwise the top_k largest logits (ties to the lower id), softmax at the temperature,
// then the shortest prefix of that list, in descending order, whose mass reaches top_p,
// and one draw u = splitmix64(seed, draw) from it. Both cut-offs are found by radix
// selection over the logits' ordered bits (by count for top_k, by probability mass for
// top_p), so nothing is sorted; the draw walks the kept tokens in id order, which gives
// the same distribution. Logprobs are log_softmax of the raw logits.
#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/chained_launch.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/sampling.h"

namespace lserve::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kMaxVocab = 1 << 18;  // the keep mask lives in shared memory

struct SampleArgs {
  const float* logits;
  int vocab;
  const SamplingRow* rows;
  int32_t* tokens;
  float* logprobs;
  int max_top;
  int32_t* top_ids;
  float* top_logprobs;
};

__device__ __forceinline__ uint32_t OrderedKey(float x) {
  if (x == 0.0f) x = 0.0f;
  const uint32_t bits = __float_as_uint(x);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

struct BestLogit {
  float value;
  int32_t id;
};
struct BetterLogit {
  __device__ BestLogit operator()(const BestLogit& a, const BestLogit& b) const {
    if (a.value != b.value) return a.value > b.value ? a : b;
    return a.id < b.id ? a : b;
  }
};

using Reduce = cub::BlockReduce<BestLogit, kThreads>;
using SumReduce = cub::BlockReduce<double, kThreads>;
using IntScan = cub::BlockScan<int, kThreads>;
using SumScan = cub::BlockScan<double, kThreads>;

struct Shared {
  union {
    typename Reduce::TempStorage reduce;
    typename SumReduce::TempStorage sum;
    typename IntScan::TempStorage int_scan;
    typename SumScan::TempStorage sum_scan;
  } temp;
  uint32_t keep[kMaxVocab / 32];
  double bucket_mass[256];
  int bucket_count[256];
  uint32_t prefix;
  int remaining_count;
  double remaining_mass;
  BestLogit best;
  double value;
  int32_t chosen;
};

// The largest logit not among `excluded` (lowest id on ties). The row is read as 16-byte
// chunks, kLoadsInFlight of them per thread before any compare (one block reads the
// whole row, so its loads must overlap), between scalar reads of the unaligned ends.
__device__ BestLogit ArgMax(const float* logits, int vocab, const int32_t* excluded, int n,
                            Shared& s) {
  constexpr int kLoadsInFlight = 8;
  BestLogit best{-INFINITY, vocab};
  auto consider = [&](float value, int i) {
    bool skip = false;
    for (int e = 0; e < n; ++e) skip = skip || excluded[e] == i;
    if (!skip) best = BetterLogit()(best, BestLogit{value, i});
  };
  const int head =
      min(vocab, static_cast<int>((16 - reinterpret_cast<uintptr_t>(logits) % 16) % 16 / 4));
  const int quads = (vocab - head) / 4;
  const float4* body = reinterpret_cast<const float4*>(logits + head);
  for (int i = threadIdx.x; i < head; i += kThreads) consider(logits[i], i);
  for (int q0 = threadIdx.x; q0 < quads; q0 += kThreads * kLoadsInFlight) {
    float4 v[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      if (q0 + u * kThreads < quads) v[u] = body[q0 + u * kThreads];
    }
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      if (q0 + u * kThreads >= quads) break;
      const int i = head + 4 * (q0 + u * kThreads);
      consider(v[u].x, i);
      consider(v[u].y, i + 1);
      consider(v[u].z, i + 2);
      consider(v[u].w, i + 3);
    }
  }
  for (int i = head + 4 * quads + threadIdx.x; i < vocab; i += kThreads) consider(logits[i], i);
  const BestLogit result = Reduce(s.temp.reduce).Reduce(best, BetterLogit());
  if (threadIdx.x == 0) s.best = result;
  __syncthreads();
  const BestLogit out = s.best;
  __syncthreads();
  return out;
}

__device__ double BlockSum(double x, Shared& s) {
  const double total = SumReduce(s.temp.sum).Sum(x);
  if (threadIdx.x == 0) s.value = total;
  __syncthreads();
  const double out = s.value;
  __syncthreads();
  return out;
}

__device__ __forceinline__ bool Kept(const Shared& s, int i) {
  return (s.keep[i >> 5] >> (i & 31)) & 1u;
}

// Radix selection over the kept tokens' keys, highest first: with by_mass, the key at
// which the mass (weights exp((l - max) / T)) of the keys above it first reaches `want`;
// else the key of the want-th largest. Returns the key; s.remaining_* hold what the tied
// tokens at that key must still contribute.
__device__ uint32_t SelectKey(const float* logits, int vocab, bool by_mass, double want,
                              float max_logit, float temperature, Shared& s) {
  if (threadIdx.x == 0) {
    s.prefix = 0;
    s.remaining_mass = want;
    s.remaining_count = static_cast<int>(want);
  }
  uint32_t mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) {
      s.bucket_mass[b] = 0.0;
      s.bucket_count[b] = 0;
    }
    __syncthreads();
    const uint32_t prefix = s.prefix;
    for (int i = threadIdx.x; i < vocab; i += kThreads) {
      if (!Kept(s, i)) continue;
      const uint32_t key = OrderedKey(logits[i]);
      if ((key & mask) != prefix) continue;
      const int bucket = (key >> shift) & 255;
      if (by_mass) {
        atomicAdd(&s.bucket_mass[bucket], exp((double{logits[i]} - max_logit) / temperature));
      } else {
        atomicAdd(&s.bucket_count[bucket], 1);
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      double mass_left = s.remaining_mass;
      int count_left = s.remaining_count;
      for (int b = 255; b >= 0; --b) {
        const bool last = b == 0;
        if (by_mass ? (s.bucket_mass[b] >= mass_left || last)
                    : (s.bucket_count[b] >= count_left || last)) {
          s.prefix = prefix | (static_cast<uint32_t>(b) << shift);
          break;
        }
        mass_left -= s.bucket_mass[b];
        count_left -= s.bucket_count[b];
      }
      s.remaining_mass = mass_left;
      s.remaining_count = count_left;
    }
    mask |= 255u << shift;
    __syncthreads();
  }
  return s.prefix;
}

// Keeps tokens with key > threshold, and the first `ties` (in id order) equal to it.
__device__ void KeepAbove(const float* logits, int vocab, uint32_t threshold, int ties, Shared& s) {
  const int run = (vocab + kThreads - 1) / kThreads;
  const int begin = min(vocab, static_cast<int>(threadIdx.x) * run);
  const int end = min(vocab, begin + run);
  int equal = 0;
  for (int i = begin; i < end; ++i) equal += Kept(s, i) && OrderedKey(logits[i]) == threshold;
  int rank = 0;
  IntScan(s.temp.int_scan).ExclusiveSum(equal, rank);
  __syncthreads();
  for (int i = begin; i < end; ++i) {
    if (!Kept(s, i)) continue;
    const uint32_t key = OrderedKey(logits[i]);
    const bool keep = key > threshold || (key == threshold && rank++ < ties);
    if (!keep) atomicAnd(&s.keep[i >> 5], ~(1u << (i & 31)));
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) SampleKernel(SampleArgs a) {
  ChainWait();
  __shared__ Shared s;
  const int r = blockIdx.x;
  const float* logits = a.logits + int64_t{r} * a.vocab;
  const SamplingRow row = a.rows[r];
  const int vocab = a.vocab;
  const BestLogit top = ArgMax(logits, vocab, nullptr, 0, s);
  int32_t token = top.id;
  if (row.temperature > 0.0f) {
    const float t = row.temperature;
    for (int w = threadIdx.x; w < (vocab + 31) / 32; w += kThreads) s.keep[w] = 0xFFFFFFFFu;
    __syncthreads();
    if (threadIdx.x == 0 && vocab % 32 != 0) s.keep[vocab / 32] = (1u << (vocab % 32)) - 1;
    __syncthreads();
    if (row.top_k > 0 && row.top_k < vocab) {
      const uint32_t key = SelectKey(logits, vocab, false, row.top_k, top.value, t, s);
      KeepAbove(logits, vocab, key, s.remaining_count, s);
    }
    auto kept_mass = [&]() {
      double mass = 0.0;
      for (int i = threadIdx.x; i < vocab; i += kThreads) {
        if (Kept(s, i)) mass += exp((double{logits[i]} - top.value) / t);
      }
      return BlockSum(mass, s);
    };
    double total = kept_mass();
    if (row.top_p < 1.0f) {
      const double want = double{row.top_p} * total;
      const uint32_t key = SelectKey(logits, vocab, true, want, top.value, t, s);
      // Tied tokens share one weight: take as many (lowest ids first) as reach the mass.
      const float tied_logit = __uint_as_float((key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key);
      const double weight = exp((double{tied_logit} - top.value) / t);
      const int ties = max(1, static_cast<int>(ceil(s.remaining_mass / weight)));
      KeepAbove(logits, vocab, key, ties, s);
      total = kept_mass();
    }
    // Inverse CDF in id order: each thread owns a run of ids.
    const double target = SamplingUniform(row.seed, row.draw) * total;
    const int run = (vocab + kThreads - 1) / kThreads;
    const int begin = min(vocab, static_cast<int>(threadIdx.x) * run);
    const int end = min(vocab, begin + run);
    double mine = 0.0;
    int last_kept = -1;
    for (int i = begin; i < end; ++i) {
      if (!Kept(s, i)) continue;
      mine += exp((double{logits[i]} - top.value) / t);
      last_kept = i;
    }
    double before = 0.0;
    SumScan(s.temp.sum_scan).ExclusiveSum(mine, before);
    constexpr int32_t kNone = 0x7FFFFFFF;
    if (threadIdx.x == 0) s.chosen = kNone;
    __syncthreads();
    // (Scan rounding may let two neighbouring runs both claim the target: the lower wins.)
    if (last_kept >= 0 && target >= before && target < before + mine) {
      double left = target - before;
      for (int i = begin; i < end; ++i) {
        if (!Kept(s, i)) continue;
        left -= exp((double{logits[i]} - top.value) / t);
        if (left < 0.0 || i == last_kept) {
          atomicMin(&s.chosen, i);
          break;
        }
      }
    }
    __syncthreads();
    if (s.chosen == kNone) {  // rounding left the target past the end: the last kept token
      __syncthreads();
      if (threadIdx.x == 0) s.chosen = -1;
      __syncthreads();
      int last = -1;
      for (int i = threadIdx.x; i < vocab; i += kThreads) last = Kept(s, i) ? max(last, i) : last;
      atomicMax(&s.chosen, last);
    }
    __syncthreads();
    token = s.chosen;
  }
  if (threadIdx.x == 0) a.tokens[r] = token;
  if (row.top_logprobs < 0) return;
  double sum = 0.0;
  for (int i = threadIdx.x; i < vocab; i += kThreads) sum += exp(double{logits[i]} - top.value);
  const double log_total = top.value + log(BlockSum(sum, s));
  if (threadIdx.x == 0) a.logprobs[r] = static_cast<float>(logits[token] - log_total);
  __shared__ int32_t chosen_ids[64];
  const int n = min(min(row.top_logprobs, a.max_top), min(vocab, 64));
  for (int k = 0; k < a.max_top; ++k) {
    const int64_t out = int64_t{r} * a.max_top + k;
    if (k < n) {
      const BestLogit next = ArgMax(logits, vocab, chosen_ids, k, s);
      if (threadIdx.x == 0) {
        chosen_ids[k] = next.id;
        a.top_ids[out] = next.id;
        a.top_logprobs[out] = static_cast<float>(next.value - log_total);
      }
      __syncthreads();
    } else if (threadIdx.x == 0) {
      a.top_ids[out] = -1;
      a.top_logprobs[out] = 0.0f;
    }
  }
}

}  // namespace

absl::Status Sample(const SampleParams& p, void* stream) {
  if (p.rows < 0 || p.vocab <= 0) return absl::InvalidArgumentError("sampling: bad shape");
  if (p.vocab > kMaxVocab) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda sampling: vocab ", p.vocab, " is over ", kMaxVocab));
  }
  if (p.max_top_logprobs > 64) {
    return absl::InvalidArgumentError("cuda sampling: at most 64 top logprobs");
  }
  if (p.rows == 0) return absl::OkStatus();
  SampleArgs args{p.logits,           p.vocab,   p.row_params,  p.tokens, p.logprobs,
                  p.max_top_logprobs, p.top_ids, p.top_logprobs};
  LaunchChained(SampleKernel, static_cast<unsigned>(p.rows), kThreads, 0,
                internal::AsStream(stream), args);
  return internal::CheckLaunch("SampleKernel");
}

}  // namespace lserve::cuda
