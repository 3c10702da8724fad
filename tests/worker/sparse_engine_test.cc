// Hybrid sparse attention through the whole engine: invariants 1, 2 and 7 of DESIGN.md §3
// and the stories260K divergence report.
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "eval/sparse_quality.h"
#include "gtest/gtest.h"
#include "kernels/backend_registry.h"
#include "tests/kernels/opaque_cpu_backend.h"
#include "tests/worker/engine_test_util.h"
#include "tests/worker/test_util.h"
#include "worker/model/synthetic_model.h"
#include "worker/scheduler/offline.h"

namespace lserve {
namespace {

const std::string kStories = LSERVE_SHARED_DIR "/models/stories260K";

absl::StatusOr<ModelWeights> Stories() { return LoadModelWeights(kStories); }

std::vector<int32_t> Ids(int n, int salt) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back((i * 29 + salt * 13 + 7) % 500 + 3);
  return ids;
}

// The stories260K engine on the CPU backend, or on `backend` (with a 64 MiB KV cache).
std::unique_ptr<Engine> MakeEngine(const SparseAttentionConfig& attention,
                                   std::unique_ptr<Backend> backend = nullptr) {
  auto weights = Stories();
  EXPECT_TRUE(weights.ok()) << weights.status();
  EngineOptions options;
  options.num_threads = 2;
  options.attention = attention;
  options.max_sequences = 8;
  options.max_chunk_tokens = 128;
  absl::StatusOr<std::unique_ptr<Engine>> engine;
  if (backend != nullptr) {
    options.max_kv_cache_bytes = int64_t{64} << 20;
    engine = Engine::Create(*std::move(weights), options, std::move(backend));
  } else {
    engine = Engine::Create(*std::move(weights), options);
  }
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

using testing::SmallHybrid;

// Prefills the prompt in chunks, then decodes `steps` fixed tokens; returns all logits.
std::vector<float> RunSequence(Engine& engine, SeqId seq, const std::vector<int32_t>& prompt,
                               int64_t chunk, int steps) {
  EXPECT_TRUE(engine.AddSequence(seq).ok());
  std::vector<float> logits;
  for (size_t b = 0; b < prompt.size(); b += chunk) {
    const size_t e = std::min(prompt.size(), b + static_cast<size_t>(chunk));
    auto out = engine.Step(
        {{seq, {prompt.begin() + b, prompt.begin() + e}, StepPhase::kPrefill, LogitRows::kLast}});
    EXPECT_TRUE(out.ok()) << out.status();
    logits.insert(logits.end(), (*out)[0].logits.begin(), (*out)[0].logits.end());
  }
  for (int s = 0; s < steps; ++s) {
    auto out = engine.Step({{seq, {(s * 31 + 5) % 500}, StepPhase::kDecode, LogitRows::kLast}});
    EXPECT_TRUE(out.ok()) << out.status();
    logits.insert(logits.end(), (*out)[0].logits.begin(), (*out)[0].logits.end());
  }
  return logits;
}

TEST(SparseEngineTest, RatioZeroWithSelectionOffIsExactlyDense) {
  SparseAttentionConfig off = SparseAttentionConfig();
  off.streaming_ratio = 0.0f;
  off.page_selection = false;
  off.page_size = 16;
  SparseAttentionConfig dense = SparseAttentionConfig::Dense();
  dense.page_size = 16;
  auto a = MakeEngine(off), b = MakeEngine(dense);
  EXPECT_EQ(RunSequence(*a, 1, Ids(150, 1), 40, 60), RunSequence(*b, 1, Ids(150, 1), 40, 60));
}

TEST(SparseEngineTest, BudgetCoveringHistoryEqualsDenseDecode) {
  for (PageScoring scoring : {PageScoring::kPerQueryHead, PageScoring::kPerKvHead}) {
    SparseAttentionConfig selecting = SparseAttentionConfig::Dense();
    selecting.page_selection = true;
    selecting.page_size = 16;
    selecting.token_budget = 512;  // the whole context
    selecting.scoring = scoring;
    SparseAttentionConfig dense = SparseAttentionConfig::Dense();
    dense.page_size = 16;
    auto a = MakeEngine(selecting), b = MakeEngine(dense);
    EXPECT_EQ(RunSequence(*a, 1, Ids(300, 2), 64, 100), RunSequence(*b, 1, Ids(300, 2), 64, 100));
  }
}

TEST(SparseEngineTest, MixedLengthBatchEqualsEachSequenceAlone) {
  for (PageScoring scoring : {PageScoring::kPerQueryHead, PageScoring::kPerKvHead}) {
    SparseAttentionConfig config = SmallHybrid();
    config.scoring = scoring;
    const std::vector<int> lengths = {1, 63, 64, 65, 200, 333};
    auto batched = MakeEngine(config);
    // Prefill every sequence in interleaved chunks of 37, then decode them all together.
    std::vector<size_t> done(lengths.size(), 0);
    std::vector<std::vector<float>> batched_logits(lengths.size());
    for (size_t s = 0; s < lengths.size(); ++s) ASSERT_TRUE(batched->AddSequence(s).ok());
    for (bool more = true; more;) {
      more = false;
      std::vector<StepInput> batch;
      for (size_t s = 0; s < lengths.size(); ++s) {
        if (done[s] >= static_cast<size_t>(lengths[s])) continue;
        const auto ids = Ids(lengths[s], s);
        const size_t end = std::min<size_t>(lengths[s], done[s] + 37);
        batch.push_back({static_cast<SeqId>(s),
                         {ids.begin() + done[s], ids.begin() + end},
                         StepPhase::kPrefill,
                         LogitRows::kLast});
        done[s] = end;
        more = true;
      }
      if (batch.empty()) break;
      auto out = batched->Step(batch);
      ASSERT_TRUE(out.ok()) << out.status();
      for (const auto& o : *out) {
        auto& dst = batched_logits[o.seq];
        dst.insert(dst.end(), o.logits.begin(), o.logits.end());
      }
    }
    for (int step = 0; step < 40; ++step) {
      std::vector<StepInput> batch;
      for (size_t s = 0; s < lengths.size(); ++s) {
        batch.push_back(
            {static_cast<SeqId>(s), {(step * 31 + 5) % 500}, StepPhase::kDecode, LogitRows::kLast});
      }
      auto out = batched->Step(batch);
      ASSERT_TRUE(out.ok()) << out.status();
      for (const auto& o : *out) {
        auto& dst = batched_logits[o.seq];
        dst.insert(dst.end(), o.logits.begin(), o.logits.end());
      }
    }
    EXPECT_GT(batched->attention_stats().tiles_visited, 0);
    EXPECT_LT(batched->attention_stats().tiles_visited, batched->attention_stats().tiles_dense);
    for (size_t s = 0; s < lengths.size(); ++s) {
      auto alone = MakeEngine(config);
      const auto expected = RunSequence(*alone, 0, Ids(lengths[s], s), 37, 40);
      ASSERT_EQ(expected.size(), batched_logits[s].size());
      EXPECT_LE(testing::RelativeMaxError(batched_logits[s], expected), 1e-5)
          << "length " << lengths[s] << " scoring " << PageScoringName(scoring);
    }
  }
}

// On a device-style backend (selections kept in backend memory, every op through one
// stream) the engine keeps the order its early-load hints promise: attention marked
// selection_settled and scoring marked after_append come right after the layer's KV
// append, or the backend fails the op. Its logits match the host path's.
TEST(SparseEngineTest, DeviceStyleEngineKeepsTheOrderItsEarlyLoadHintsPromise) {
  for (PageScoring scoring : {PageScoring::kPerQueryHead, PageScoring::kPerKvHead}) {
    SparseAttentionConfig config = SmallHybrid();
    config.scoring = scoring;
    auto cpu = CreateBackend("cpu", {2, 0});
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    auto opaque = std::make_unique<testing::OpaqueCpuBackend>(cpu->get());
    opaque->CheckEarlyLoadOrder();
    auto engine = MakeEngine(config, std::move(opaque));
    ASSERT_NE(engine, nullptr);
    // 300 prompt tokens and 24 decode steps: six rescorings past the 64-token budget.
    const std::vector<float> device_style = RunSequence(*engine, 1, Ids(300, 2), 64, 24);
    const std::vector<float> host = RunSequence(*MakeEngine(config), 1, Ids(300, 2), 64, 24);
    ASSERT_EQ(device_style.size(), host.size());
    int far = 0;
    for (size_t i = 0; i < host.size(); ++i) far += std::fabs(device_style[i] - host[i]) > 1e-3f;
    EXPECT_EQ(far, 0) << PageScoringName(scoring);
  }
}

// Selections leave the engine as they are used (from device-style selection rows and from
// the host selector alike) and replay on another engine: a replayed selection is what the
// engine then uses, whatever its own scores would have picked.
TEST(SparseEngineTest, SelectionsExportFromDeviceRowsAndReplayOnTheHost) {
  for (PageScoring scoring : {PageScoring::kPerQueryHead, PageScoring::kPerKvHead}) {
    SCOPED_TRACE(PageScoringName(scoring));
    SparseAttentionConfig config = SmallHybrid();
    config.scoring = scoring;
    auto cpu = CreateBackend("cpu", {2, 0});
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    auto device_style = MakeEngine(config, std::make_unique<testing::OpaqueCpuBackend>(cpu->get()));
    auto host = MakeEngine(config), replay = MakeEngine(config), other = MakeEngine(config);
    ASSERT_TRUE(device_style && host && replay && other);
    std::vector<Engine*> engines = {device_style.get(), host.get(), replay.get(), other.get()};
    const std::vector<int32_t> prompt = Ids(300, 2);
    for (Engine* e : engines) {
      ASSERT_TRUE(e->AddSequence(1).ok());
      for (size_t b = 0; b < prompt.size(); b += 100) {
        const size_t end = std::min(prompt.size(), b + 100);
        ASSERT_TRUE(
            e->Step({{1, {prompt.begin() + b, prompt.begin() + end}, StepPhase::kPrefill}}).ok());
      }
    }
    EXPECT_EQ(device_style->attention().ImportSelections(1, {}).code(),
              absl::StatusCode::kFailedPrecondition);
    int replayed = 0, differing_logits = 0;
    for (int step = 0; step < 12; ++step) {
      std::vector<std::vector<float>> logits;
      std::vector<std::vector<std::vector<int32_t>>> exported;
      std::vector<std::vector<int32_t>> imposed;
      for (Engine* e : engines) {
        if (e == replay.get()) {
          ASSERT_TRUE(e->attention().ImportSelections(1, exported[0]).ok());
        }
        if (e == other.get()) {
          // The first pages of the budget and the newest, wherever the host selects.
          imposed = exported[1];
          for (std::vector<int32_t>& pages : imposed) {
            if (pages.empty()) continue;
            const int32_t newest = pages.back();
            pages.clear();
            for (int32_t p = 0; p + 1 < config.BudgetPages(); ++p) pages.push_back(p);
            pages.push_back(newest);
          }
          ASSERT_TRUE(e->attention().ImportSelections(1, imposed).ok());
        }
        const int64_t before = e->selection_recomputations();
        auto out = e->Step({{1, {(step * 31 + 5) % 500}, StepPhase::kDecode, LogitRows::kLast}});
        ASSERT_TRUE(out.ok()) << out.status();
        logits.push_back((*out)[0].logits);
        auto selections = e->attention().ExportSelections(1);
        ASSERT_TRUE(selections.ok()) << selections.status();
        exported.push_back(*std::move(selections));
        if (e == other.get() && e->selection_recomputations() > before) {
          EXPECT_EQ(exported[3], imposed) << "step " << step;
          ++replayed;
        }
      }
      size_t non_empty = 0;
      for (const auto& pages : exported[1]) non_empty += !pages.empty();
      EXPECT_GT(non_empty, 0u);
      EXPECT_EQ(exported[0], exported[1]) << "device rows vs host selector, step " << step;
      EXPECT_EQ(exported[2], exported[0]) << "replayed selections, step " << step;
      EXPECT_EQ(logits[2], logits[1]) << "step " << step;
      for (size_t i = 0; i < logits[1].size(); ++i) {
        differing_logits += std::fabs(logits[3][i] - logits[1][i]) > 1e-3f;
      }
    }
    EXPECT_EQ(replayed, 3);  // decode steps 0, 4 and 8 rescore
    EXPECT_GT(differing_logits, 0);
    // Malformed imports: the wrong number of keys, pages out of order, over the budget.
    std::vector<std::vector<int32_t>> bad = host->attention().ExportSelections(1).value();
    EXPECT_EQ(host->attention().ImportSelections(1, {{0}}).code(),
              absl::StatusCode::kInvalidArgument);
    for (std::vector<int32_t> pages :
         {std::vector<int32_t>{3, 1}, std::vector<int32_t>{0, 1, 2, 3, 4}}) {
      bad[0] = pages;
      EXPECT_EQ(host->attention().ImportSelections(1, bad).code(),
                absl::StatusCode::kInvalidArgument);
    }
  }
}

// The check itself: attention or scoring marked as following an append, a RoPE + append
// marked as following the QKV projection, or top-k marked as following scoring, fails
// after another op.
TEST(SparseEngineTest, OpsOutOfTheEarlyLoadOrderFail) {
  auto cpu = CreateBackend("cpu", {1, 0});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  testing::OpaqueCpuBackend opaque(cpu->get());
  opaque.CheckEarlyLoadOrder();
  RopeParams no_tokens;
  no_tokens.dtype = DType::kF32;
  no_tokens.head_dim = 2;
  ASSERT_TRUE(opaque.Rope(no_tokens).ok());
  PagedAttentionParams attention;
  attention.selection_settled = true;
  EXPECT_EQ(opaque.PagedAttention(attention).code(), absl::StatusCode::kFailedPrecondition);
  ScorePagesParams score;
  score.after_append = true;
  EXPECT_EQ(opaque.ScorePages(score).code(), absl::StatusCode::kFailedPrecondition);
  RopeAppendKvParams rope_append;
  rope_append.inputs_settled = true;
  EXPECT_EQ(opaque.RopeAppendKv(rope_append).code(), absl::StatusCode::kFailedPrecondition);
  SelectPagesParams select;
  select.after_scoring = true;
  EXPECT_EQ(opaque.SelectPages(select).code(), absl::StatusCode::kFailedPrecondition);
}

// The setting (page 16, budget 64, sink 16, local 64) and two wider ones: prints
// per-step logit divergence from dense and the greedy agreement, teacher-forced on the
// dense ids for 400 steps after a 41-token prompt.
TEST(SparseEngineTest, Stories260KDivergenceFromDenseIsReported) {
  const auto reference = testing::ReadJson(kStories + "/reference.json");
  const auto prompt = reference["cases"][2]["prompt_ids"].get<std::vector<int32_t>>();
  std::printf("%-10s %6s %6s %6s %14s %14s %10s %14s\n", "scoring", "budget", "local", "steps",
              "mean max|dl|", "worst max|dl|", "agreement", "tiles/dense");
  std::vector<double> agreement;
  for (int64_t window : {64, 128, 256}) {
    for (PageScoring scoring : {PageScoring::kPerQueryHead, PageScoring::kPerKvHead}) {
      SparseAttentionConfig config = SmallHybrid();
      config.scoring = scoring;
      config.token_budget = window;
      config.prefill_local = config.decode_local = window;
      auto report = CompareSparseToDense(Stories, config, prompt, 400, 16);
      ASSERT_TRUE(report.ok()) << report.status();
      std::printf("%-10s %6ld %6ld %6d %14.4f %14.4f %10.3f %7ld/%ld\n", PageScoringName(scoring),
                  static_cast<long>(window), static_cast<long>(window), report->steps,
                  report->mean_max_abs_logit_diff, report->worst_max_abs_logit_diff,
                  report->greedy_agreement, static_cast<long>(report->tiles_visited),
                  static_cast<long>(report->tiles_dense));
      // Early steps fit every window and the budget, so they must agree exactly.
      EXPECT_EQ(report->max_abs_logit_diff[0], 0.0);
      EXPECT_LT(report->tiles_visited, report->tiles_dense);
      EXPECT_GT(report->worst_max_abs_logit_diff, 0.0);
      agreement.push_back(report->greedy_agreement);
    }
  }
}

}  // namespace
}  // namespace lserve
