// The GEMMs of a decode step, where the work is streaming the weights once: Llama-3-8B's
// joined projections (qkv 6144x4096, o 4096x4096, gate_up 28672x4096, down 4096x14336),
// bf16, at a few rows, and the lm_head product (logits 128256x4096, float32 out).
//  * per shape: each few-row GEMM variant and the runner's choice (cuBLASLt candidates and
//    those variants, timed on first use), as microseconds and weight bytes per second, the
//    weights of a different layer at every call so nothing stays in L2;
//  * the step's chain (4 GEMMs x --layers): launched one by one on a stream, and the same
//    launches captured once into a CUDA graph and replayed, which shows what the gaps
//    between launches cost.
//
// Usage: cuda_gemv_bench [--rows=1,8] [--layers=32] [--json=PATH]
#include <cuda_runtime_api.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_report.h"
#include "bench/cuda_bench_util.h"
#include "kernels/cuda/gemm.h"

namespace lserve::bench {
namespace {

struct Shape {
  const char* name;
  int64_t n, k;
  DType out_dtype = DType::kBF16;
};
constexpr Shape kShapes[] = {
    {"qkv", 6144, 4096}, {"o", 4096, 4096}, {"gate_up", 28672, 4096}, {"down", 4096, 14336}};
// Once per step, after the layers; timed per shape only, over kLogitsCopies weight copies.
constexpr Shape kLogits = {"logits", 128256, 4096, DType::kF32};
constexpr int kLogitsCopies = 4;

struct Layer {
  std::vector<const void*> weights;  // one per shape
};

GemmParams Params(const void* x, const void* w, void* y, int64_t m, const Shape& shape) {
  GemmParams p;
  p.x = x;
  p.w = w;
  p.y = y;
  p.m = m;
  p.n = shape.n;
  p.k = shape.k;
  p.dtype = DType::kBF16;
  p.out_dtype = shape.out_dtype;
  return p;
}

int Main(int argc, char** argv) {
  std::vector<int64_t> row_counts;
  for (absl::string_view part :
       absl::StrSplit(FlagValue(argc, argv, "rows", "1,8"), ',', absl::SkipEmpty())) {
    int64_t m = 0;
    if (!absl::SimpleAtoi(part, &m) || m < 1 || m > 64) {
      std::fprintf(stderr, "cuda_gemv_bench: --rows takes counts from 1 to 64\n");
      return 2;
    }
    row_counts.push_back(m);
  }
  const int layers = std::stoi(FlagValue(argc, argv, "layers", "32"));
  DeviceAllocations memory;
  RandomSource random(size_t{64} << 20);
  std::vector<Layer> weights(layers);
  int64_t step_bytes = 0;
  for (Layer& layer : weights) {
    for (const Shape& shape : kShapes) {
      const size_t bytes = static_cast<size_t>(shape.n * shape.k) * 2;
      void* w = nullptr;
      CUDA_OK(cudaMalloc(&w, bytes));
      random.Fill(memory.Keep(w), bytes);
      layer.weights.push_back(w);
      step_bytes += static_cast<int64_t>(bytes);
    }
  }
  const int64_t max_rows = 64;
  void* x = nullptr;
  void* y = nullptr;
  CUDA_OK(cudaMalloc(&x, max_rows * 28672 * 2));
  CUDA_OK(cudaMalloc(&y, max_rows * kLogits.n * 4));
  random.Fill(memory.Keep(x), max_rows * 28672 * 2);
  memory.Keep(y);
  std::vector<const void*> logits_weights;
  for (int i = 0; i < kLogitsCopies; ++i) {
    const size_t bytes = static_cast<size_t>(kLogits.n * kLogits.k) * 2;
    void* w = nullptr;
    CUDA_OK(cudaMalloc(&w, bytes));
    random.Fill(memory.Keep(w), bytes);
    logits_weights.push_back(w);
  }
  auto runner = cuda::GemmRunner::Create();
  STATUS_OK(runner.status());
  cudaStream_t stream = nullptr;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));

  nlohmann::json report = Provenance(argc, argv);
  report["layers"] = layers;
  report["step_weight_bytes"] = step_bytes;
  std::printf("%-8s %4s %10s", "shape", "rows", "MB");
  for (int v = 0; v < cuda::SkinnyGemmVariants(); ++v) std::printf("   variant %d  ", v);
  std::printf("   runner\n");
  for (int64_t m : row_counts) {
    for (size_t index = 0; index <= std::size(kShapes); ++index) {
      const bool logits = index == std::size(kShapes);
      const Shape& shape = logits ? kLogits : kShapes[index];
      const double bytes = 2.0 * shape.n * shape.k;
      nlohmann::json row = {{"shape", shape.name}, {"rows", m}, {"n", shape.n}, {"k", shape.k}};
      std::printf("%-8s %4lld %10.1f", shape.name, static_cast<long long>(m), bytes / 1e6);
      int layer = 0;
      auto next_weight = [&] {
        return logits ? logits_weights[layer++ % kLogitsCopies]
                      : weights[layer++ % layers].weights[index];
      };
      for (int v = 0; v < cuda::SkinnyGemmVariants(); ++v) {
        if (m > cuda::kSkinnyGemmMaxRows) {
          std::printf("  %14s", "-");
          continue;
        }
        const double ms = TimeMs([&] {
          STATUS_OK(cuda::SkinnyGemm(Params(x, next_weight(), y, m, shape), nullptr, v));
        });
        std::printf("  %5.1fus %4.2fTB", ms * 1e3, bytes / ms / 1e9);
        row["variant_us"].push_back(ms * 1e3);
      }
      const double ms = TimeMs(
          [&] { STATUS_OK((*runner)->Run(Params(x, next_weight(), y, m, shape), nullptr)); });
      std::printf("  %5.1fus %4.2fTB\n", ms * 1e3, bytes / ms / 1e9);
      row["runner_us"] = ms * 1e3;
      report["shapes"].push_back(row);
    }
  }

  // The decode step's chain of GEMMs, launched one by one and as one captured graph.
  std::printf("\n%4s %12s %12s %10s %10s\n", "rows", "stream ms", "graph ms", "stream TB/s",
              "graph TB/s");
  for (int64_t m : row_counts) {
    auto chain = [&] {
      for (const Layer& layer : weights) {
        for (size_t i = 0; i < std::size(kShapes); ++i) {
          STATUS_OK((*runner)->Run(Params(x, layer.weights[i], y, m, kShapes[i]), stream));
        }
      }
    };
    chain();  // every shape tuned before capture
    CUDA_OK(cudaStreamSynchronize(stream));
    cudaGraph_t graph = nullptr;
    cudaGraphExec_t exec = nullptr;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    chain();
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    auto time_on_stream = [&](auto run) {
      cudaEvent_t start, stop;
      CUDA_OK(cudaEventCreate(&start));
      CUDA_OK(cudaEventCreate(&stop));
      for (int i = 0; i < 2; ++i) run();
      CUDA_OK(cudaEventRecord(start, stream));
      constexpr int kReps = 10;
      for (int i = 0; i < kReps; ++i) run();
      CUDA_OK(cudaEventRecord(stop, stream));
      CUDA_OK(cudaEventSynchronize(stop));
      float ms = 0;
      CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
      cudaEventDestroy(start);
      cudaEventDestroy(stop);
      return ms / kReps;
    };
    const double stream_ms = time_on_stream(chain);
    const double graph_ms = time_on_stream([&] { CUDA_OK(cudaGraphLaunch(exec, stream)); });
    std::printf("%4lld %12.3f %12.3f %10.2f %10.2f\n", static_cast<long long>(m), stream_ms,
                graph_ms, step_bytes / stream_ms / 1e9, step_bytes / graph_ms / 1e9);
    report["chain"].push_back(
        {{"rows", m}, {"stream_ms", stream_ms}, {"graph_ms", graph_ms}, {"launches", 4 * layers}});
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
  }
  cudaStreamDestroy(stream);
  return WriteReport(report, FlagValue(argc, argv, "json")) ? 0 : 1;
}

}  // namespace
}  // namespace lserve::bench

int main(int argc, char** argv) { return lserve::bench::Main(argc, argv); }
