// Decode steps replayed as CUDA graphs (EngineOptions::replay_decode_steps): the CUDA
// backend's deferred staging keeps array offsets across steps, and an engine that replays
// its decode steps samples bitwise the tokens and logprobs of one that launches op by op,
// dense and hybrid, while batches change shape and selections are recomputed on schedule;
// chained (programmatic dependent) launches sample bitwise what plain launches do. Also
// what Engine::Create checks on the GPU: head dims and the KV pools' share of free memory.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "kernels/backend_registry.h"
#include "tests/kernels/cuda/cuda_test_util.h"
#include "worker/attention/kv_store_sizing.h"
#include "worker/engine.h"
#include "worker/model/synthetic_model.h"

namespace lserve::cuda {
namespace {

using testing::CudaDeviceTest;

class EngineGraphTest : public CudaDeviceTest {
 protected:
  void SetUp() override {
    CudaDeviceTest::SetUp();
    // Both engines must run the same GEMM algorithms: the heuristic's first, untimed.
    setenv("LSERVE_GEMM_TUNE", "0", 1);
  }
};

TEST_F(EngineGraphTest, ReplayableStepsStageAtStableOffsetsAndUploadBeforeLaunching) {
  LSERVE_ASSERT_OK_AND_ASSIGN(std::unique_ptr<Backend> backend, CreateBackend("cuda"));
  std::vector<void*> first_step;
  for (int step = 0; step < 3; ++step) {
    backend->BeginReplayableStep();
    std::vector<void*> staged;
    std::vector<std::vector<int32_t>> hosts;
    for (int array = 0; array < 5; ++array) {
      // Sizes grow a little every step and stay under the same power of two.
      std::vector<int32_t> host(300 + 7 * array + step);
      for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<int32_t>(i * 31 + step);
      LSERVE_ASSERT_OK_AND_ASSIGN(void* device, backend->Stage(host.data(), host.size() * 4));
      staged.push_back(device);
      hosts.push_back(std::move(host));
    }
    LSERVE_ASSERT_OK(backend->Synchronize());
    if (step == 0) first_step = staged;
    EXPECT_EQ(staged, first_step) << "step " << step;
    for (size_t a = 0; a < staged.size(); ++a) {
      std::vector<int32_t> back(hosts[a].size());
      LSERVE_ASSERT_OK(backend->memory()->CopyToHost(back.data(), staged[a], back.size() * 4));
      ASSERT_EQ(back, hosts[a]) << "step " << step << " array " << a;
    }
  }
}

struct Run {
  std::vector<std::vector<int32_t>> tokens;  // per sequence
  std::vector<std::vector<float>> logprobs;
  ReplayCounters counters;
};

// Three prompts past the selection budget, then decode steps: all three, then two after
// the middle one finishes, then a new fourth joins (prefilled in its own step).
Run Generate(const SparseAttentionConfig& attention, bool replay) {
  ModelConfig config = Synthetic100MConfig();
  config.num_layers = 4;
  absl::StatusOr<ModelWeights> weights = MakeSyntheticWeights(config, 7);
  EXPECT_TRUE(weights.ok()) << weights.status();
  EngineOptions options;
  options.backend = "cuda";
  options.attention = attention;
  options.max_sequences = 4;
  options.max_kv_cache_bytes = int64_t{256} << 20;
  options.replay_decode_steps = replay;
  absl::StatusOr<std::unique_ptr<Engine>> created = Engine::Create(*std::move(weights), options);
  EXPECT_TRUE(created.ok()) << created.status();
  Engine& engine = **created;
  Run run;
  run.tokens.resize(4);
  run.logprobs.resize(4);
  auto sampling = [](SeqId seq) {
    SamplingRow row;
    row.temperature = 0.8f;
    row.top_p = 0.95f;
    row.seed = 1000 + seq;
    row.top_logprobs = 0;
    return row;
  };
  auto prefill = [&](SeqId seq, int length) {
    EXPECT_TRUE(engine.AddSequence(seq).ok());
    StepInput input{seq, {}, StepPhase::kPrefill, LogitRows::kNone, true, sampling(seq)};
    for (int i = 0; i < length; ++i) input.tokens.push_back((i * 37 + seq * 11) % 31000 + 3);
    absl::StatusOr<std::vector<StepOutput>> out = engine.Step({input});
    EXPECT_TRUE(out.ok()) << out.status();
    run.tokens[seq].push_back((*out)[0].token);
    run.logprobs[seq].push_back((*out)[0].logprob);
  };
  auto decode = [&](const std::vector<SeqId>& seqs) {
    std::vector<StepInput> batch;
    for (SeqId seq : seqs) {
      SamplingRow row = sampling(seq);
      row.draw = run.tokens[seq].size();
      batch.push_back(
          {seq, {run.tokens[seq].back()}, StepPhase::kDecode, LogitRows::kNone, true, row});
    }
    absl::StatusOr<std::vector<StepOutput>> out = engine.Step(batch);
    ASSERT_TRUE(out.ok()) << out.status();
    for (size_t b = 0; b < seqs.size(); ++b) {
      run.tokens[seqs[b]].push_back((*out)[b].token);
      run.logprobs[seqs[b]].push_back((*out)[b].logprob);
    }
  };
  prefill(0, 700);
  prefill(1, 777);
  prefill(2, 901);
  for (int step = 0; step < 24; ++step) decode({0, 1, 2});
  EXPECT_TRUE(engine.FreeSequence(1).ok());
  for (int step = 0; step < 12; ++step) decode({0, 2});
  prefill(3, 650);
  for (int step = 0; step < 24; ++step) decode({0, 2, 3});
  run.counters = engine.backend().replay_counters();
  return run;
}

SparseAttentionConfig Hybrid() {
  SparseAttentionConfig attention;
  attention.sink = 64;
  attention.decode_local = 128;
  attention.token_budget = 256;  // selection from the first decode step on
  attention.reuse_interval = 4;
  return attention;
}

void ExpectSameGeneration(const SparseAttentionConfig& attention) {
  const Run eager = Generate(attention, false);
  const Run replayed = Generate(attention, true);
  EXPECT_EQ(eager.counters.replayed + eager.counters.captured, 0);
  // 60 decode steps in three batch shapes, a few segments each: most replay a graph.
  EXPECT_GT(replayed.counters.replayed, 30);
  EXPECT_GT(replayed.counters.captured, 0);
  EXPECT_EQ(replayed.counters.capture_failures, 0);
  for (int seq = 0; seq < 4; ++seq) {
    EXPECT_EQ(replayed.tokens[seq], eager.tokens[seq]) << "sequence " << seq;
    EXPECT_EQ(replayed.logprobs[seq], eager.logprobs[seq]) << "sequence " << seq;
  }
}

TEST_F(EngineGraphTest, ReplayedDenseDecodeSamplesWhatEagerDecodeSamples) {
  ExpectSameGeneration(SparseAttentionConfig::Dense());
}

TEST_F(EngineGraphTest, ReplayedHybridDecodeSamplesWhatEagerDecodeSamples) {
  ExpectSameGeneration(Hybrid());
}

// Chained launches (programmatic dependent launch, where the GPU has it) only overlap a
// kernel's start with the previous one's end: every kernel still waits for its inputs, so
// the samples are bitwise those of plain launches, in graphs and out of them.
TEST_F(EngineGraphTest, ChainedLaunchesSampleWhatPlainLaunchesSample) {
  for (const bool replay : {false, true}) {
    SCOPED_TRACE(replay ? "replayed" : "eager");
    setenv("LSERVE_PDL", "0", 1);
    const lserve::cuda::Run plain = Generate(Hybrid(), replay);
    unsetenv("LSERVE_PDL");
    const lserve::cuda::Run chained = Generate(Hybrid(), replay);
    EXPECT_EQ(chained.counters.capture_failures, 0);
    for (int seq = 0; seq < 4; ++seq) {
      EXPECT_EQ(chained.tokens[seq], plain.tokens[seq]) << "sequence " << seq;
      EXPECT_EQ(chained.logprobs[seq], plain.logprobs[seq]) << "sequence " << seq;
    }
  }
}

class CudaEngineCreateTest : public testing::CudaDeviceTest {};

ModelConfig SmallLlama(int head_dim, int max_positions) {
  ModelConfig config = TinySyntheticConfig();
  config.head_dim = head_dim;
  config.max_position_embeddings = max_positions;
  return config;
}

TEST_F(CudaEngineCreateTest, OtherHeadDimsAreRefusedNamingTheCpuBackend) {
  for (int head_dim : {32, 256}) {
    LSERVE_ASSERT_OK_AND_ASSIGN(ModelWeights weights,
                                MakeSyntheticWeights(SmallLlama(head_dim, 1024), 1));
    EngineOptions options;
    options.backend = "cuda";
    const absl::Status status = Engine::Create(std::move(weights), options).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find("--backend=cpu"), std::string::npos) << status;
  }
}

TEST_F(CudaEngineCreateTest, KvCacheIsSizedFromFreeMemoryByTheFraction) {
  // Contexts long enough that memory, not max_sequences full contexts, binds.
  LSERVE_ASSERT_OK_AND_ASSIGN(ModelWeights weights,
                              MakeSyntheticWeights(SmallLlama(64, 1 << 20), 1));
  EngineOptions options;
  options.backend = "cuda";
  options.attention = SparseAttentionConfig::Dense();
  options.attention.page_size = 16;
  options.max_sequences = 64;
  options.gpu_memory_utilization = 0.05;
  LSERVE_ASSERT_OK_AND_ASSIGN(auto engine, Engine::Create(weights, options));
  LSERVE_ASSERT_OK_AND_ASSIGN(const BackendMemoryInfo memory, engine->backend().QueryMemory());
  const KvStoreConfig& kv = engine->kv_store().config();
  const int64_t kv_bytes = kv.num_dense_pages * DensePageBytes(kv);
  // About 5% of what was free before the pools took it: 1/20 of free + KV, within a page.
  const double share = static_cast<double>(kv_bytes) / (memory.free_bytes + kv_bytes);
  std::printf("KVSIZE fraction 0.05: %lld MiB of KV, %lld MiB still free of %lld MiB\n",
              static_cast<long long>(kv_bytes >> 20),
              static_cast<long long>(memory.free_bytes >> 20),
              static_cast<long long>(memory.total_bytes >> 20));
  EXPECT_GT(share, 0.045);
  EXPECT_LT(share, 0.055);
  options.gpu_memory_utilization = 1e-9;  // no room for one page
  EXPECT_EQ(Engine::Create(weights, options).status().code(), absl::StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace lserve::cuda
