// Prefill attention on the GPU at Llama-3-8B geometry (32 query heads, 8 KV heads,
// head_dim 128), bf16, page 64, one layer, one sequence of 8K-128K tokens attending to
// itself in one launch:
//  * dense: time and TFLOP/s (causal: 2 * 2 * L^2 / 2 * head_dim * query heads);
//  * hybrid, half the KV heads streaming (sink 128, local 8192): time against dense;
//  * tiles visited out of the dense total, counted with the kernel's own plan function
//    over its tiles (PrefillTiles: 128 rows = 32 tokens x 4 query heads and 128 keys for
//    the wgmma kernel), and the resulting ideal speedup;
//  * the mma.sync kernel's dense time beside it, where the wgmma kernel runs.
// Pages are scattered (a random permutation). Prints a table; --json.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_report.h"
#include "bench/cuda_bench_util.h"
#include "kernels/cuda/paged_attention.h"
#include "kernels/cuda/prefill_plan.h"

namespace lserve::bench {
namespace {

constexpr int kQHeads = 32, kKvHeads = 8, kDim = 128, kPage = 64, kLogical = 16;
constexpr int kSink = 128, kLocal = 8192;

struct Layer {
  DeviceAllocations memory;
  PagedAttentionParams attention;
  double tiles_visited = 0;
  double tiles_dense = 0;
};

// One sequence of `len` tokens: every key in the pools, every token a query row.
void BuildLayer(Layer& l, const RandomSource& random, int64_t len, bool hybrid,
                cuda::PrefillTileShape tiles) {
  const int tile_tokens = tiles.rows / (kQHeads / kKvHeads);
  PagedKvLayer kv = BenchKvLayer(l.memory, kKvHeads, kDim, kPage, kLogical, hybrid);
  const int64_t pages = (len + kPage - 1) / kPage;
  CUDA_OK(cudaMalloc(&kv.dense.base, pages * kv.dense.page_stride * 2));
  random.Fill(kv.dense.base, pages * kv.dense.page_stride * 2);
  l.memory.Keep(kv.dense.base);
  // The streaming pool holds the whole prompt (a one-launch prefill reads every window).
  const int sink_pages = (kSink + kPage - 1) / kPage;
  const int64_t stream_pages = pages + 1;
  if (kv.streaming.num_heads > 0) {
    CUDA_OK(cudaMalloc(&kv.streaming.base, stream_pages * kv.streaming.page_stride * 2));
    random.Fill(kv.streaming.base, stream_pages * kv.streaming.page_stride * 2);
    l.memory.Keep(kv.streaming.base);
  }
  std::vector<int32_t> order(pages);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(2));
  std::vector<int32_t> stream_indices(stream_pages);
  std::iota(stream_indices.begin(), stream_indices.end(), 0);
  PageTableView t;
  t.num_seqs = 1;
  t.ring_start = sink_pages * kPage;
  t.kv_len = l.memory.Keep(DeviceCopy(std::vector<int32_t>{static_cast<int32_t>(len)}));
  t.dense_indptr = l.memory.Keep(DeviceCopy(std::vector<int32_t>{0, static_cast<int32_t>(pages)}));
  t.dense_indices = l.memory.Keep(DeviceCopy(order));
  t.stream_indptr =
      l.memory.Keep(DeviceCopy(std::vector<int32_t>{0, static_cast<int32_t>(stream_pages)}));
  t.stream_indices = l.memory.Keep(DeviceCopy(stream_indices));
  t.stream_sink_pages = l.memory.Keep(DeviceCopy(std::vector<int32_t>{sink_pages}));
  t.max_kv_len = static_cast<int32_t>(len);
  t.max_queries = static_cast<int32_t>(len);
  void* q = nullptr;
  void* out = nullptr;
  CUDA_OK(cudaMalloc(&q, len * kQHeads * kDim * 2));
  CUDA_OK(cudaMalloc(&out, len * kQHeads * kDim * 2));
  random.Fill(q, len * kQHeads * kDim * 2);
  l.memory.Keep(q);
  l.memory.Keep(out);
  PagedAttentionParams& a = l.attention;
  a.kv = kv;
  a.tables = t;
  a.q_indptr = l.memory.Keep(DeviceCopy(std::vector<int32_t>{0, static_cast<int32_t>(len)}));
  a.q = q;
  a.out = out;
  a.q_row_stride = a.out_row_stride = kQHeads * kDim;
  a.num_q_heads = kQHeads;
  a.scale = 1.0f / std::sqrt(float(kDim));
  a.sink = kSink;
  a.local = l.memory.Keep(DeviceCopy(std::vector<int32_t>{kLocal}));
  // Tiles, as the kernel plans them (one count per KV head: the group shares the tile).
  for (int64_t first = 0; first < len; first += tile_tokens) {
    const int64_t last = std::min(len, first + tile_tokens) - 1;
    for (int h = 0; h < kKvHeads; ++h) {
      l.tiles_visited +=
          cuda::PlanKeyTiles(BenchHeadStreams(hybrid, h), first, last, kSink, kLocal, tiles.keys)
              .count();
      l.tiles_dense += cuda::PlanKeyTiles(false, first, last, kSink, kLocal, tiles.keys).count();
    }
  }
}

}  // namespace
}  // namespace lserve::bench

int main(int argc, char** argv) {
  using namespace lserve;
  using namespace lserve::bench;
  const std::string json_path = FlagValue(argc, argv, "json");
  const bool quick = FlagValue(argc, argv, "quick") == "1";
  int num_sms = 0;
  CUDA_OK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, 0));
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  void* workspace = nullptr;
  CUDA_OK(cudaMalloc(&workspace, cuda::kPrefillWorkspaceBytes));
  CUDA_OK(cudaMemset(workspace, 0, cuda::kPrefillWorkspaceBytes));
  RandomSource random(size_t{64} << 20);
  nlohmann::json report = Provenance(argc, argv);
  report["gpu"] = prop.name;
  std::vector<int64_t> lengths =
      quick ? std::vector<int64_t>{8192, 32768} : std::vector<int64_t>{8192, 32768, 65536, 131072};
  const cuda::PrefillKernel kernel = cuda::ResolvePrefillKernel(cuda::PrefillKernel::kAuto);
  const bool wgmma = kernel == cuda::PrefillKernel::kWgmma;
  const cuda::PrefillTileShape tiles = cuda::PrefillTiles(kernel);
  report["kernel"] = wgmma ? "wgmma (sm_90a)" : "mma.sync";
  std::printf(
      "Prefill attention, Llama-3-8B layer (32/8 heads, d128), bf16, page 64, one sequence, "
      "%s kernel\n",
      wgmma ? "wgmma" : "mma.sync");
  std::printf("%8s %10s %8s %10s %9s %14s %8s %12s\n", "tokens", "dense ms", "TFLOP/s", "hybrid ms",
              "speedup", "tiles visited", "ideal", "mma.sync ms");
  for (int64_t len : lengths) {
    double ms[3] = {0, 0, 0};  // dense, hybrid, dense through mma.sync
    double visited = 0, dense_tiles = 0;
    for (int run = 0; run < 3; ++run) {
      if (run == 2 && !wgmma) break;
      const bool hybrid = run == 1;
      const cuda::PrefillKernel chosen = run == 2 ? cuda::PrefillKernel::kMmaSync : kernel;
      Layer l;
      BuildLayer(l, random, len, hybrid, cuda::PrefillTiles(chosen));
      ms[run] = TimeMs([&] {
        STATUS_OK(cuda::PagedPrefillAttention(l.attention, workspace, num_sms, nullptr, chosen));
      });
      if (hybrid) {
        visited = l.tiles_visited;
        dense_tiles = l.tiles_dense;
      }
    }
    const double flops = 4.0 * double(len) * double(len) / 2.0 * kDim * kQHeads;
    const double tflops = flops / (ms[0] * 1e-3) / 1e12;
    std::printf("%8lld %10.3f %8.1f %10.3f %8.2fx %7.0f/%-7.0f %7.2fx %12.3f\n", (long long)len,
                ms[0], tflops, ms[1], ms[0] / ms[1], visited, dense_tiles, dense_tiles / visited,
                ms[2]);
    report["prefill"].push_back({{"tokens", len},
                                 {"dense_ms", ms[0]},
                                 {"dense_tflops", tflops},
                                 {"hybrid_ms", ms[1]},
                                 {"hybrid_speedup", ms[0] / ms[1]},
                                 {"tiles_visited", visited},
                                 {"tiles_dense", dense_tiles},
                                 {"ideal_speedup", dense_tiles / visited},
                                 {"tile_rows", tiles.rows},
                                 {"tile_keys", tiles.keys},
                                 {"mma_sync_dense_ms", ms[2]}});
  }
  cudaFree(workspace);
  if (!WriteReport(report, json_path)) return 1;
  return 0;
}
