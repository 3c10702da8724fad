// What the GPU benchmarks share: error checks that exit, device copies and the buffers
// that own them, the head layout of a benchmark layer, a source of random bf16 values for
// filling pools, and event timing.
#ifndef LSERVE_BENCH_CUDA_BENCH_UTIL_H_
#define LSERVE_BENCH_CUDA_BENCH_UTIL_H_

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "kernels/attention_params.h"

namespace lserve::bench {

#define CUDA_OK(expr)                                                 \
  do {                                                                \
    const cudaError_t e = (expr);                                     \
    if (e != cudaSuccess) {                                           \
      std::fprintf(stderr, "%s: %s\n", #expr, cudaGetErrorString(e)); \
      std::exit(1);                                                   \
    }                                                                 \
  } while (0)
#define STATUS_OK(expr)                                              \
  do {                                                               \
    const absl::Status s = (expr);                                   \
    if (!s.ok()) {                                                   \
      std::fprintf(stderr, "%s: %s\n", #expr, s.ToString().c_str()); \
      std::exit(1);                                                  \
    }                                                                \
  } while (0)

template <typename T>
inline T* DeviceCopy(const std::vector<T>& host) {
  T* ptr = nullptr;
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&ptr), std::max<size_t>(1, host.size()) * sizeof(T)));
  if (!host.empty()) {
    CUDA_OK(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  return ptr;
}

// Device buffers freed together.
class DeviceAllocations {
 public:
  DeviceAllocations() = default;
  DeviceAllocations(const DeviceAllocations&) = delete;
  DeviceAllocations& operator=(const DeviceAllocations&) = delete;
  ~DeviceAllocations() {
    for (void* p : pointers_) cudaFree(p);
  }
  template <typename T>
  T* Keep(T* p) {
    pointers_.push_back(p);
    return p;
  }

 private:
  std::vector<void*> pointers_;
};

// Whether KV head `h` streams in a benchmark layer: every other head, when hybrid.
inline bool BenchHeadStreams(bool hybrid, int h) { return hybrid && h % 2 == 1; }

// A bf16 layer's head layout (BenchHeadStreams): head slots and
// kinds in device memory, each pool's heads and page stride (the dense pool's pages hold
// kmax/kmin too); the pools' memory is the caller's.
inline PagedKvLayer BenchKvLayer(DeviceAllocations& memory, int kv_heads, int head_dim,
                                 int page_size, int logical_page_size, bool hybrid) {
  std::vector<int32_t> slot(kv_heads);
  std::vector<uint8_t> streaming(kv_heads);
  int dense_heads = 0;
  int stream_heads = 0;
  for (int h = 0; h < kv_heads; ++h) {
    streaming[h] = BenchHeadStreams(hybrid, h);
    slot[h] = streaming[h] ? stream_heads++ : dense_heads++;
  }
  PagedKvLayer kv;
  kv.dtype = DType::kBF16;
  kv.page_size = page_size;
  kv.logical_page_size = logical_page_size;
  kv.head_dim = head_dim;
  kv.num_kv_heads = kv_heads;
  kv.kv_head_slot = memory.Keep(DeviceCopy(slot));
  kv.kv_head_streaming = memory.Keep(DeviceCopy(streaming));
  kv.dense.num_heads = dense_heads;
  kv.dense.page_stride = 2LL * dense_heads * page_size * head_dim +
                         2LL * dense_heads * (page_size / logical_page_size) * head_dim;
  kv.streaming.num_heads = stream_heads;
  kv.streaming.page_stride = 2LL * stream_heads * page_size * head_dim;
  return kv;
}

// Random bf16 bits, N(0, 1)-like, in a device buffer that fills pools by copies.
class RandomSource {
 public:
  explicit RandomSource(size_t bytes) : bytes_(bytes) {
    std::mt19937 rng(1);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<uint16_t> host(bytes / 2);
    for (uint16_t& x : host) {
      const float f = normal(rng);
      uint32_t bits;
      std::memcpy(&bits, &f, 4);
      x = static_cast<uint16_t>(bits >> 16);
    }
    data_ = DeviceCopy(host);
  }
  void Fill(void* dst, size_t bytes) const {
    for (size_t done = 0; done < bytes; done += bytes_) {
      CUDA_OK(cudaMemcpy(static_cast<char*>(dst) + done, data_, std::min(bytes_, bytes - done),
                         cudaMemcpyDeviceToDevice));
    }
  }

 private:
  size_t bytes_;
  uint16_t* data_;
};

// Mean milliseconds per repetition of launch(reps) (which queues `reps` repetitions on
// `stream`), between events on `stream`, with reps growing from `reps` until the span passes
// 50 ms or reps reaches max_reps.
template <typename Launch>
inline double TimeRepetitionsMs(Launch launch, cudaStream_t stream, int reps, int max_reps) {
  cudaEvent_t start, stop;
  CUDA_OK(cudaEventCreate(&start));
  CUDA_OK(cudaEventCreate(&stop));
  float ms = 0;
  for (;;) {
    CUDA_OK(cudaEventRecord(start, stream));
    launch(reps);
    CUDA_OK(cudaEventRecord(stop, stream));
    CUDA_OK(cudaEventSynchronize(stop));
    CUDA_OK(cudaEventElapsedTime(&ms, start, stop));
    if (ms > 50 || reps >= max_reps) break;
    reps *= 4;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms / reps;
}

// Mean milliseconds of `run` over enough repetitions.
template <typename Run>
inline double TimeMs(Run run) {
  for (int i = 0; i < 3; ++i) run();
  return TimeRepetitionsMs(
      [&](int reps) {
        for (int i = 0; i < reps; ++i) run();
      },
      nullptr, 10, 2000);
}

// Milliseconds per call of run(stream) as a step runs in the engine: `calls` calls
// captured into one CUDA graph (kernels launched chained keep their programmatic edges),
// the graph replayed until 50 ms have passed; per call.
template <typename Run>
inline double TimeGraphMs(Run run, int calls = 16) {
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int i = 0; i < 3; ++i) run(stream);
  CUDA_OK(cudaStreamSynchronize(stream));
  cudaGraph_t graph;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  for (int i = 0; i < calls; ++i) run(stream);
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  cudaGraphExec_t exec;
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaGraphLaunch(exec, stream));
  const double ms = TimeRepetitionsMs(
      [&](int reps) {
        for (int i = 0; i < reps; ++i) CUDA_OK(cudaGraphLaunch(exec, stream));
      },
      stream, 4, 1000);
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaStreamDestroy(stream));
  return ms / calls;
}

}  // namespace lserve::bench

#endif  // LSERVE_BENCH_CUDA_BENCH_UTIL_H_
