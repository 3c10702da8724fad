// Decode attention on the GPU at Llama-3-8B head geometry (32 query heads, 8 KV heads,
// head_dim 128), bf16, page 64, one layer:
//  (a) dense paged decode at batch 1/8/32 and 8K-256K keys: time and effective bandwidth
//      (bytes of K and V read per second);
//  (b) hybrid decode, half the KV heads streaming (sink 128 + local 256), the other half
//      reading their top pages within a 4096-token budget, reused for 4 steps: selector
//      time (scoring + top-k) apart from attention time, and the step time averaged over
//      the reuse interval against dense at the same shape.
// Kernels run back to back from the host ("ms" columns) and, as the engine runs decode
// steps, replayed from CUDA graphs ("graph ms": a reuse cycle of steps per graph).
// Pages are scattered (a random permutation), statistics random. Prints a table; --json.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_report.h"
#include "bench/cuda_bench_util.h"
#include "kernels/cuda/paged_attention.h"

namespace lserve::bench {
namespace {

constexpr int kQHeads = 32, kKvHeads = 8, kDim = 128, kPage = 64, kLogical = 16;
constexpr int kSink = 128, kLocal = 256, kBudget = 4096, kReuse = 4;

// One layer's pools and page tables for `batch` sequences of `len` keys.
struct Batch {
  DeviceAllocations memory;
  PagedAttentionParams attention;
  ScorePagesParams score;
  SelectPagesParams select;
  int num_jobs = 0;
  double kv_bytes = 0;  // K and V of every key, all heads (what dense decode reads)
};

// hybrid: every other KV head streams; scoring per query head or per KV head.
void BuildBatch(Batch& b, const RandomSource& random, int batch, int64_t len, bool hybrid,
                bool per_kv_head, bool scatter) {
  PagedKvLayer kv = BenchKvLayer(b.memory, kKvHeads, kDim, kPage, kLogical, hybrid);
  const int64_t pages_per_seq = (len + kPage - 1) / kPage;
  const int64_t dense_pages = pages_per_seq * batch;
  const size_t dense_bytes = dense_pages * kv.dense.page_stride * 2;
  CUDA_OK(cudaMalloc(&kv.dense.base, dense_bytes));
  b.memory.Keep(kv.dense.base);
  random.Fill(kv.dense.base, dense_bytes);
  const int sink_pages = (kSink + kPage - 1) / kPage;
  const int ring = (kLocal + kPage - 1) / kPage + 1;
  if (kv.streaming.num_heads > 0) {
    const size_t bytes = size_t(batch) * (sink_pages + ring) * kv.streaming.page_stride * 2;
    CUDA_OK(cudaMalloc(&kv.streaming.base, bytes));
    b.memory.Keep(kv.streaming.base);
    random.Fill(kv.streaming.base, bytes);
  }
  // Page tables: each sequence's dense pages scattered over the pool.
  std::vector<int32_t> order(dense_pages);
  std::iota(order.begin(), order.end(), 0);
  if (scatter) std::shuffle(order.begin(), order.end(), std::mt19937(2));
  std::vector<int32_t> kv_len(batch, static_cast<int32_t>(len)), dense_indptr{0}, stream_indptr{0},
      stream_indices, sink(batch, sink_pages), q_indptr{0}, local(batch, kLocal);
  for (int s = 0; s < batch; ++s) {
    dense_indptr.push_back(static_cast<int32_t>((s + 1) * pages_per_seq));
    for (int p = 0; p < sink_pages + ring; ++p)
      stream_indices.push_back(s * (sink_pages + ring) + p);
    stream_indptr.push_back(static_cast<int32_t>(stream_indices.size()));
    q_indptr.push_back(s + 1);
  }
  PageTableView t;
  t.num_seqs = batch;
  t.ring_start = sink_pages * kPage;
  t.kv_len = b.memory.Keep(DeviceCopy(kv_len));
  t.dense_indptr = b.memory.Keep(DeviceCopy(dense_indptr));
  t.dense_indices = b.memory.Keep(DeviceCopy(order));
  t.stream_indptr = b.memory.Keep(DeviceCopy(stream_indptr));
  t.stream_indices = b.memory.Keep(DeviceCopy(stream_indices));
  t.stream_sink_pages = b.memory.Keep(DeviceCopy(sink));
  t.max_kv_len = static_cast<int32_t>(len);
  t.max_queries = 1;
  void* q = nullptr;
  void* out = nullptr;
  CUDA_OK(cudaMalloc(&q, size_t(batch) * kQHeads * kDim * 2));
  CUDA_OK(cudaMalloc(&out, size_t(batch) * kQHeads * kDim * 2));
  b.memory.Keep(q);
  b.memory.Keep(out);
  random.Fill(q, size_t(batch) * kQHeads * kDim * 2);
  PagedAttentionParams& a = b.attention;
  a.kv = kv;
  a.tables = t;
  a.q_indptr = b.memory.Keep(DeviceCopy(q_indptr));
  a.q = q;
  a.out = out;
  a.q_row_stride = a.out_row_stride = kQHeads * kDim;
  a.num_q_heads = kQHeads;
  a.scale = 1.0f / std::sqrt(float(kDim));
  a.sink = kSink;
  a.local = b.memory.Keep(DeviceCopy(local));
  a.max_streaming_keys = kSink + kLocal;
  b.kv_bytes = double(batch) * len * kKvHeads * kDim * 2 * 2;
  if (!hybrid || len <= kBudget) return;
  // Selection: one job per (sequence, dense KV head, query head) or per (sequence, KV head).
  const int group = kQHeads / kKvHeads;
  const int max_pages = kBudget / kPage;
  std::vector<PageScoreJob> jobs;
  std::vector<int32_t> begin(size_t(batch) * kQHeads, -1), end(begin.size(), -1);
  for (int s = 0; s < batch; ++s) {
    for (int h = 0; h < kKvHeads; ++h) {
      if (BenchHeadStreams(hybrid, h)) continue;
      for (int q_head = h * group; q_head < (h + 1) * group; q_head += per_kv_head ? group : 1) {
        const int j = static_cast<int>(jobs.size());
        jobs.push_back(
            {s, h, q_head, per_kv_head ? group : 1, s, static_cast<int32_t>(j * pages_per_seq)});
        for (int g = q_head; g < q_head + (per_kv_head ? group : 1); ++g) {
          begin[s * kQHeads + g] = j * max_pages;
          end[s * kQHeads + g] = (j + 1) * max_pages;
        }
      }
    }
  }
  b.num_jobs = static_cast<int>(jobs.size());
  float* scores = nullptr;
  int32_t* selected = nullptr;
  int32_t* counts = nullptr;
  CUDA_OK(
      cudaMalloc(reinterpret_cast<void**>(&scores), jobs.size() * pages_per_seq * sizeof(float)));
  CUDA_OK(
      cudaMalloc(reinterpret_cast<void**>(&selected), jobs.size() * max_pages * sizeof(int32_t)));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&counts), jobs.size() * sizeof(int32_t)));
  b.memory.Keep(scores);
  b.memory.Keep(selected);
  b.memory.Keep(counts);
  const PageScoreJob* jobs_d = b.memory.Keep(DeviceCopy(jobs));
  b.score = {kv, t, q, kQHeads * kDim, jobs_d, b.num_jobs, scores};
  b.select = {scores, jobs_d, b.num_jobs, t.kv_len, kPage, max_pages, selected, counts};
  a.selection_begin = b.memory.Keep(DeviceCopy(begin));
  a.selection_end = b.memory.Keep(DeviceCopy(end));
  a.selected_pages = selected;
  a.max_keys = kBudget;
  a.selection_per_kv_head = per_kv_head;
}

double DecodeMs(Batch& b, int num_sms, int min_split_keys, void** workspace,
                size_t* workspace_bytes) {
  const cuda::DecodeLaunch launch = cuda::PlanDecode(b.attention, num_sms, min_split_keys);
  if (launch.workspace_bytes > *workspace_bytes) {
    cudaFree(*workspace);
    CUDA_OK(cudaMalloc(workspace, launch.workspace_bytes));
    CUDA_OK(cudaMemset(*workspace, 0, launch.workspace_bytes));
    *workspace_bytes = launch.workspace_bytes;
  }
  return TimeMs(
      [&] { STATUS_OK(cuda::PagedDecodeAttention(b.attention, launch, *workspace, nullptr)); });
}

// Milliseconds per decode step as the engine runs steps, captured in CUDA graphs: a cycle of
// kReuse steps, the first scoring and selecting pages (when the batch selects) and the
// others reusing the selection, each attention marked settled where no selection ran
// before it (PagedAttentionParams::selection_settled). Call after DecodeMs (workspace).
double GraphStepMs(Batch& b, int num_sms, int min_split_keys, void* workspace) {
  const cuda::DecodeLaunch launch = cuda::PlanDecode(b.attention, num_sms, min_split_keys);
  SelectPagesParams select = b.select;
  select.after_scoring = true;
  PagedAttentionParams after_select = b.attention;
  after_select.selection_settled = b.num_jobs == 0;
  PagedAttentionParams settled = b.attention;
  settled.selection_settled = true;
  return TimeGraphMs([&](cudaStream_t stream) {
           if (b.num_jobs > 0) {
             STATUS_OK(cuda::ScorePages(b.score, stream));
             STATUS_OK(cuda::SelectPages(select, stream));
           }
           STATUS_OK(cuda::PagedDecodeAttention(after_select, launch, workspace, stream));
           for (int i = 1; i < kReuse; ++i) {
             STATUS_OK(cuda::PagedDecodeAttention(settled, launch, workspace, stream));
           }
         }) /
         kReuse;
}

}  // namespace
}  // namespace lserve::bench

int main(int argc, char** argv) {
  using namespace lserve;
  using namespace lserve::bench;
  const std::string json_path = FlagValue(argc, argv, "json");
  const bool quick = FlagValue(argc, argv, "quick") == "1";
  // --scatter=0 lays each sequence's pages out in order (the paging cost in isolation);
  // --batch=N[,N...], --keys=N[,N...], --hybrid=0 narrow the sweep (e.g. for a profiler).
  const bool scatter = FlagValue(argc, argv, "scatter", "1") == "1";
  const bool run_hybrid = FlagValue(argc, argv, "hybrid", "1") == "1";
  const std::string only_batch = FlagValue(argc, argv, "batch");
  const std::string only_keys = FlagValue(argc, argv, "keys");
  // --min_split_keys=N plans split-K with splits of at least N keys (the launcher's default
  // otherwise).
  const int min_split_keys =
      std::stoi(FlagValue(argc, argv, "min_split_keys", std::to_string(cuda::kDecodeMinSplitKeys)));
  int num_sms = 0;
  CUDA_OK(cudaDeviceGetAttribute(&num_sms, cudaDevAttrMultiProcessorCount, 0));
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  RandomSource random(size_t{64} << 20);
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  nlohmann::json report = Provenance(argc, argv);
  report["gpu"] = prop.name;
  std::vector<int> batches = {1, 8, 32};
  if (!only_batch.empty()) {
    batches.clear();
    for (int64_t batch : IntList(only_batch, "cuda_decode_bench"))
      batches.push_back(static_cast<int>(batch));
  }
  std::vector<int64_t> lengths =
      quick ? std::vector<int64_t>{8192, 32768}
            : std::vector<int64_t>{8192, 16384, 32768, 65536, 131072, 262144};
  if (!only_keys.empty()) lengths = IntList(only_keys, "cuda_decode_bench");
  report["scattered_pages"] = scatter;
  report["min_split_keys"] = min_split_keys;
  std::printf("Dense paged decode, Llama-3-8B heads, bf16, page 64 (one layer)\n");
  std::printf("%6s %8s %10s %10s %6s %10s\n", "batch", "keys", "ms", "TB/s", "splits", "graph ms");
  std::map<std::pair<int, int64_t>, double> dense_ms, dense_graph_ms;
  for (int batch : batches) {
    for (int64_t len : lengths) {
      Batch b;
      BuildBatch(b, random, batch, len, false, false, scatter);
      const double ms = DecodeMs(b, num_sms, min_split_keys, &workspace, &workspace_bytes);
      dense_ms[{batch, len}] = ms;
      const double tbs = b.kv_bytes / (ms * 1e-3) / 1e12;
      const int splits = cuda::PlanDecode(b.attention, num_sms, min_split_keys).splits;
      const double graph_ms = GraphStepMs(b, num_sms, min_split_keys, workspace);
      dense_graph_ms[{batch, len}] = graph_ms;
      std::printf("%6d %8lld %10.4f %10.3f %6d %10.4f\n", batch, (long long)len, ms, tbs, splits,
                  graph_ms);
      report["dense"].push_back({{"batch", batch},
                                 {"keys", len},
                                 {"ms", ms},
                                 {"graph_ms", graph_ms},
                                 {"tb_per_s", tbs},
                                 {"kv_bytes", b.kv_bytes},
                                 {"splits", splits}});
    }
  }
  std::printf(
      "\nHybrid decode: 4 of 8 KV heads streaming (sink 128, local 256), budget 4096, "
      "reuse 4\n");
  std::printf("%6s %8s %8s %10s %8s %8s %10s %10s %10s %8s %10s %8s\n", "batch", "keys", "scoring",
              "select ms", "score", "top-k", "attn ms", "step ms", "dense ms", "speedup",
              "graph ms", "speedup");
  for (bool per_kv_head : {false, true}) {
    if (!run_hybrid) break;
    for (int batch : batches) {
      for (int64_t len : lengths) {
        Batch b;
        BuildBatch(b, random, batch, len, true, per_kv_head, scatter);
        // The selector as a step runs it (scoring, then top-k), and each kernel alone.
        double select_ms = 0, score_only_ms = 0, topk_only_ms = 0;
        if (b.num_jobs > 0) {
          select_ms = TimeMs([&] {
            STATUS_OK(cuda::ScorePages(b.score, nullptr));
            STATUS_OK(cuda::SelectPages(b.select, nullptr));
          });
          score_only_ms = TimeMs([&] { STATUS_OK(cuda::ScorePages(b.score, nullptr)); });
          topk_only_ms = TimeMs([&] { STATUS_OK(cuda::SelectPages(b.select, nullptr)); });
        }
        const double attention_ms =
            DecodeMs(b, num_sms, min_split_keys, &workspace, &workspace_bytes);
        const double step_ms = attention_ms + select_ms / kReuse;
        const double dense = dense_ms[{batch, len}];
        const double graph_ms = GraphStepMs(b, num_sms, min_split_keys, workspace);
        const double dense_graph = dense_graph_ms[{batch, len}];
        const char* mode = per_kv_head ? "kv_head" : "q_head";
        std::printf("%6d %8lld %8s %10.4f %8.4f %8.4f %10.4f %10.4f %10.4f %8.2f %10.4f %8.2f\n",
                    batch, (long long)len, mode, select_ms, score_only_ms, topk_only_ms,
                    attention_ms, step_ms, dense, dense / step_ms, graph_ms,
                    dense_graph / graph_ms);
        report["hybrid"].push_back({{"batch", batch},
                                    {"keys", len},
                                    {"scoring", mode},
                                    {"select_ms", select_ms},
                                    {"score_only_ms", score_only_ms},
                                    {"topk_only_ms", topk_only_ms},
                                    {"attention_ms", attention_ms},
                                    {"step_ms", step_ms},
                                    {"dense_ms", dense},
                                    {"speedup_vs_dense", dense / step_ms},
                                    {"graph_step_ms", graph_ms},
                                    {"dense_graph_ms", dense_graph},
                                    {"graph_speedup_vs_dense", dense_graph / graph_ms}});
      }
    }
  }
  if (!WriteReport(report, json_path)) return 1;
  return 0;
}
