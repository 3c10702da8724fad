// Queue marks of the CUDA engine: a step computing a prefill chunk places an event after
// each layer's KV append, and a copy that waits (on the device) for layer l's event reads
// that layer's final bytes while the later layers still compute. This is how a hand-off
// sends the KV during the prefill; here a device-to-host copy on another stream stands in
// for NCCL.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "tests/kernels/cuda/cuda_test_util.h"
#include "worker/engine.h"
#include "worker/model/synthetic_model.h"

namespace lserve::cuda {
namespace {

using testing::CudaDeviceTest;

struct DeviceRange {
  const uint8_t* data;
  size_t bytes;
};

// Layer by layer, the device ranges of the exported pages in both pools.
std::vector<std::vector<DeviceRange>> LayerRanges(const KvStore& kv, const KvPlacement& pages) {
  std::vector<std::vector<DeviceRange>> layers(kv.dense_pool().num_layers());
  const KvPool* pools[] = {&kv.dense_pool(), &kv.streaming_pool()};
  const std::vector<int32_t>* lists[] = {&pages.dense, &pages.streaming};
  for (int layer = 0; layer < static_cast<int>(layers.size()); ++layer) {
    for (int p = 0; p < 2; ++p) {
      if (layer >= pools[p]->num_layers() || pools[p]->PageBytes(layer) == 0) continue;
      const size_t page_bytes = pools[p]->PageBytes(layer);
      const uint8_t* base = static_cast<const uint8_t*>(pools[p]->LayerBase(layer));
      for (int32_t page : *lists[p])
        layers[layer].push_back({base + page * page_bytes, page_bytes});
    }
  }
  return layers;
}

size_t Bytes(const std::vector<DeviceRange>& ranges) {
  size_t total = 0;
  for (const DeviceRange& range : ranges) total += range.bytes;
  return total;
}

class EngineMarksTest : public CudaDeviceTest {};

TEST_F(EngineMarksTest, EachLayerIsFinalOnTheDeviceOnceItsEventHasPassed) {
  for (const bool dense : {false, true}) {
    SCOPED_TRACE(dense ? "dense" : "hybrid");
    ModelConfig config = Synthetic100MConfig();
    config.num_layers = 6;
    absl::StatusOr<ModelWeights> weights = MakeSyntheticWeights(config, 11);
    ASSERT_TRUE(weights.ok()) << weights.status();
    EngineOptions options;
    options.backend = "cuda";
    if (dense) options.attention = SparseAttentionConfig::Dense();
    options.attention.sink = 64;
    options.max_sequences = 2;
    options.max_kv_cache_bytes = int64_t{256} << 20;
    LSERVE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Engine> engine,
                                Engine::Create(*std::move(weights), options));
    const SeqId seq = 1;
    LSERVE_ASSERT_OK(engine->AddSequence(seq));
    std::vector<int32_t> prompt(1500);
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>(i * 7919 % 32000);
    StepInput first{seq, std::vector<int32_t>(prompt.begin(), prompt.begin() + 1000)};
    ASSERT_TRUE(engine->Step({first}).ok());
    StepInput last{seq, std::vector<int32_t>(prompt.begin() + 1000, prompt.end())};
    last.sample = true;

    std::vector<std::vector<DeviceRange>> layers;
    std::vector<std::vector<uint8_t>> copies;
    std::thread copier;
    int marks_seen = 0;
    auto started = [&](std::shared_ptr<QueueMarks> marks) {
      ++marks_seen;
      ASSERT_EQ(marks->size(), config.num_layers);
      absl::StatusOr<KvPageExport> pages = engine->kv_store().ExportPages(seq, 500);
      ASSERT_TRUE(pages.ok()) << pages.status();
      layers = LayerRanges(engine->kv_store(), pages->pages);
      copies.resize(layers.size());
      copier = std::thread([&, marks] {
        ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
        cudaStream_t stream = nullptr;
        ASSERT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
        for (size_t l = 0; l < layers.size(); ++l) {
          absl::StatusOr<void*> event = marks->WaitPlaced(
              static_cast<int>(l), std::chrono::steady_clock::now() + std::chrono::seconds(60));
          ASSERT_TRUE(event.ok()) << event.status();
          ASSERT_NE(*event, nullptr);
          ASSERT_EQ(cudaStreamWaitEvent(stream, static_cast<cudaEvent_t>(*event), 0), cudaSuccess);
          copies[l].resize(Bytes(layers[l]));
          size_t at = 0;
          for (const DeviceRange& range : layers[l]) {
            ASSERT_EQ(cudaMemcpyAsync(copies[l].data() + at, range.data, range.bytes,
                                      cudaMemcpyDeviceToHost, stream),
                      cudaSuccess);
            at += range.bytes;
          }
        }
        ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
        cudaStreamDestroy(stream);
      });
    };
    absl::StatusOr<std::vector<StepOutput>> out = engine->Step({last}, started);
    if (copier.joinable()) copier.join();
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_EQ(marks_seen, 1);
    for (size_t l = 0; l < layers.size(); ++l) {
      std::vector<uint8_t> now(Bytes(layers[l]));
      size_t at = 0;
      for (const DeviceRange& range : layers[l]) {
        ASSERT_EQ(cudaMemcpy(now.data() + at, range.data, range.bytes, cudaMemcpyDeviceToHost),
                  cudaSuccess);
        at += range.bytes;
      }
      ASSERT_FALSE(now.empty());
      EXPECT_TRUE(copies[l] == now) << "layer " << l << " was copied before it was final";
    }
    // A decode-only step places no marks.
    StepInput decode{seq, {(*out)[0].token}, StepPhase::kDecode};
    int decode_marks = 0;
    ASSERT_TRUE(engine->Step({decode}, [&](std::shared_ptr<QueueMarks>) { ++decode_marks; }).ok());
    EXPECT_EQ(decode_marks, 0);
  }
}

}  // namespace
}  // namespace lserve::cuda
