// Top-k page selection of the CUDA backend's decode path.
#include <cuda_runtime.h>

#include <cstdint>
#include <cub/block/block_scan.cuh>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/chained_launch.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/paged_attention.h"

namespace lserve::cuda {
namespace {

using internal::CheckLaunch;

constexpr int kSelectThreads = 512;

// Order-preserving map of a score to an unsigned key (zeros of either sign are equal).
__device__ __forceinline__ uint32_t OrderedKey(float score) {
  if (score == 0.0f) score = 0.0f;
  const uint32_t bits = __float_as_uint(score);
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

// Keys of this many pages fit in the select kernel's shared memory (longer histories read
// the scores from global memory in every pass).
constexpr int kSelectSharedKeys = 8192;

// One block per job: radix select (up to four 8-bit passes, from the top digit) finds the
// digits of the keep-th best page other than the newest, stopping early once every key
// under the digits found so far is needed (then the keys are compared on those digits
// only, and all keys equal there are kept: the same set as the full key would give). Then
// each thread takes a contiguous run of pages, and two block scans (ties, then pages taken)
// place, in index order, the pages above that prefix and the lowest-indexed pages equal to
// it. The job, its length and output row are read before the wait for the scoring kernel
// when p.after_scoring says it writes none of them.
__global__ void __launch_bounds__(kSelectThreads) SelectKernel(SelectPagesParams p) {
  if (!p.after_scoring) ChainWait();
  using Scan = cub::BlockScan<int, kSelectThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ uint32_t shared_keys[kSelectSharedKeys];
  __shared__ int histograms[2][256];  // by pass parity: a pass clears the next one's
  __shared__ uint32_t shared_prefix;
  __shared__ int shared_remaining;
  __shared__ bool shared_settled;  // every key of the bucket found last is needed
  const PageScoreJob job = p.jobs[blockIdx.x];
  const int64_t len = p.kv_len[job.seq];
  const int n = static_cast<int>((len + p.page_size - 1) / p.page_size);
  const int64_t out_row = p.out_rows != nullptr ? p.out_rows[blockIdx.x] : blockIdx.x;
  int32_t* out = p.selected + out_row * (p.selected_stride > 0 ? p.selected_stride : p.max_pages);
  const float* scores = p.scores + job.out_offset;
  if (p.after_scoring) ChainWait();
  if (n <= p.max_pages) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = i;
    if (threadIdx.x == 0) p.counts[out_row] = n;
    return;
  }
  const int keep = p.max_pages - 1;
  const int others = n - 1;
  const bool in_shared = others <= kSelectSharedKeys;
  if (in_shared) {
    for (int i = threadIdx.x; i < others; i += blockDim.x) shared_keys[i] = OrderedKey(scores[i]);
  }
  auto key_at = [&](int i) { return in_shared ? shared_keys[i] : OrderedKey(scores[i]); };
  for (int i = threadIdx.x; i < 2 * 256; i += blockDim.x) histograms[i / 256][i % 256] = 0;
  if (threadIdx.x == 0) {
    shared_prefix = 0;
    shared_remaining = keep;
    shared_settled = false;
  }
  __syncthreads();
  uint32_t mask = 0;
  for (int shift = 24, pass = 0; shift >= 0 && keep > 0 && !shared_settled; shift -= 8, ++pass) {
    int* histogram = histograms[pass & 1];
    const uint32_t prefix = shared_prefix;
    for (int i = threadIdx.x; i < others; i += blockDim.x) {
      const uint32_t key = key_at(i);
      if ((key & mask) == prefix) atomicAdd(&histogram[(key >> shift) & 255], 1);
    }
    __syncthreads();
    if (threadIdx.x < 32) {
      // Warp 0 finds the bucket holding the remaining-th largest key: lane l sums buckets
      // 255 - 8l down to 248 - 8l, a prefix sum over lanes locates the lane, which then
      // walks its eight buckets.
      const int lane = threadIdx.x;
      const int remaining = shared_remaining;
      int own = 0;
      for (int k = 0; k < 8; ++k) own += histogram[255 - 8 * lane - k];
      int inclusive = own;
      for (int offset = 1; offset < 32; offset <<= 1) {
        const int other = __shfl_up_sync(0xFFFFFFFFu, inclusive, offset);
        if (lane >= offset) inclusive += other;
      }
      const unsigned found = __ballot_sync(0xFFFFFFFFu, inclusive >= remaining);
      if (lane == __ffs(found) - 1) {
        int above = inclusive - own;
        for (int k = 0; k < 8; ++k) {
          const int bucket = 255 - 8 * lane - k;
          if (above + histogram[bucket] >= remaining) {
            shared_remaining = remaining - above;
            shared_prefix = prefix | (static_cast<uint32_t>(bucket) << shift);
            shared_settled = above + histogram[bucket] == remaining;
            break;
          }
          above += histogram[bucket];
        }
      }
    } else {
      // The next pass's histogram (last read before this pass's first barrier).
      int* next = histograms[(pass + 1) & 1];
      for (int i = threadIdx.x - 32; i < 256; i += blockDim.x - 32) next[i] = 0;
    }
    mask |= 255u << shift;
    __syncthreads();
  }
  if (keep > 0) {
    // The digits found; keys compare on those (all of them unless the search settled).
    const uint32_t threshold = shared_prefix;
    const int ties_wanted = shared_remaining;
    auto digits_at = [&](int i) { return key_at(i) & mask; };
    const int run = (others + kSelectThreads - 1) / kSelectThreads;
    const int run_begin = min(others, static_cast<int>(threadIdx.x) * run);
    const int run_end = min(others, run_begin + run);
    int ties = 0;
    for (int i = run_begin; i < run_end; ++i) ties += digits_at(i) == threshold ? 1 : 0;
    int tie_rank = 0;
    Scan(scan_storage).ExclusiveSum(ties, tie_rank);
    __syncthreads();
    int taken = 0;
    for (int i = run_begin, tie = tie_rank; i < run_end; ++i) {
      const uint32_t key = digits_at(i);
      if (key == threshold) taken += tie++ < ties_wanted ? 1 : 0;
      taken += key > threshold ? 1 : 0;
    }
    int position = 0;
    Scan(scan_storage).ExclusiveSum(taken, position);
    for (int i = run_begin, tie = tie_rank; i < run_end; ++i) {
      const uint32_t key = digits_at(i);
      const bool take = key > threshold || (key == threshold && tie++ < ties_wanted);
      if (take) out[position++] = i;
    }
  }
  if (threadIdx.x == 0) {
    out[keep] = n - 1;
    p.counts[out_row] = keep + 1;
  }
}

}  // namespace

absl::Status SelectPages(const SelectPagesParams& p, void* stream) {
  if (p.page_size <= 0 || p.max_pages <= 0 ||
      (p.selected_stride > 0 && p.selected_stride < p.max_pages)) {
    return absl::InvalidArgumentError(
        "page selection needs page_size, max_pages > 0 and rows of max_pages or more");
  }
  if (p.num_jobs == 0) return absl::OkStatus();
  LaunchChained(SelectKernel, static_cast<unsigned>(p.num_jobs), kSelectThreads, 0,
                internal::AsStream(stream), p);
  return CheckLaunch("SelectKernel");
}

}  // namespace lserve::cuda
