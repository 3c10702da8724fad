// stories260K against llama2.c's own float32 greedy ids, with the prompt fed whole, in
// chunks, token by token, and all cases batched together.
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/worker/test_util.h"
#include "worker/scheduler/offline.h"

namespace lserve {
namespace {

const std::string kModelDir = LSERVE_SHARED_DIR "/models/stories260K";

struct ReferenceCase {
  std::vector<int32_t> prompt;
  std::vector<int32_t> continuation;
  size_t exact_prefix_len = 0;
};

std::vector<ReferenceCase> LoadCases() {
  std::vector<ReferenceCase> cases;
  // The document must outlive the loop: ranging over a member of a temporary dangles.
  const nlohmann::json reference = testing::ReadJson(kModelDir + "/reference.json");
  for (const auto& c : reference["cases"]) {
    cases.push_back({c["prompt_ids"].get<std::vector<int32_t>>(),
                     c["greedy_continuation_ids"].get<std::vector<int32_t>>(),
                     c["exact_prefix_len"].get<size_t>()});
  }
  return cases;
}

std::unique_ptr<Engine> MakeEngine(int page_size) {
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(kModelDir);
  EXPECT_TRUE(weights.ok()) << weights.status();
  EngineOptions options;
  options.num_threads = 2;
  options.attention = SparseAttentionConfig::Dense();
  options.attention.page_size = page_size;
  options.attention.logical_page_size = std::min(16, page_size);
  options.max_sequences = 4;
  auto engine = Engine::Create(*std::move(weights), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return *std::move(engine);
}

void ExpectMatchesReference(const std::vector<ReferenceCase>& cases,
                            const std::vector<GenerationResult>& results) {
  ASSERT_EQ(results.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    ASSERT_TRUE(results[i].status.ok()) << results[i].status;
    const size_t n = cases[i].exact_prefix_len;
    ASSERT_GE(results[i].tokens.size(), n);
    EXPECT_EQ(
        std::vector<int32_t>(results[i].tokens.begin(), results[i].tokens.begin() + n),
        std::vector<int32_t>(cases[i].continuation.begin(), cases[i].continuation.begin() + n))
        << "case " << i;
  }
}

std::vector<GenerationRequest> GreedyRequests(const std::vector<ReferenceCase>& cases) {
  std::vector<GenerationRequest> requests;
  for (const ReferenceCase& c : cases) {
    GenerationRequest request;
    request.prompt = c.prompt;
    request.sampling.max_tokens = static_cast<int>(c.exact_prefix_len);
    requests.push_back(request);
  }
  return requests;
}

class Stories260KTest : public ::testing::TestWithParam<int> {};

TEST_P(Stories260KTest, EachCaseAloneReproducesReference) {
  const auto cases = LoadCases();
  auto engine = MakeEngine(GetParam());
  SchedulerOptions options;
  options.max_running = 1;
  for (int64_t chunk : {0, 5, 1}) {
    options.prefill_chunk = chunk;
    for (size_t i = 0; i < cases.size(); ++i) {
      SCOPED_TRACE("prefill chunk " + std::to_string(chunk));
      ExpectMatchesReference({cases[i]}, Generate(*engine, GreedyRequests({cases[i]}), options));
    }
  }
  EXPECT_EQ(engine->kv_store().tables().dense_allocator().num_used(), 0);
}

TEST_P(Stories260KTest, MixedBatchOfAllCasesReproducesReference) {
  const auto cases = LoadCases();
  auto engine = MakeEngine(GetParam());
  SchedulerOptions options;
  options.max_running = 3;
  options.prefill_chunk = 7;    // prompts of 1, 6 and 41 tokens finish prefill at
  options.max_step_tokens = 9;  // different steps, so steps mix prefill and decode
  ExpectMatchesReference(cases, Generate(*engine, GreedyRequests(cases), options));
  EXPECT_EQ(engine->kv_store().tables().dense_allocator().num_used(), 0);
}

INSTANTIATE_TEST_SUITE_P(PageSizes, Stories260KTest, ::testing::Values(16, 64),
                         [](const auto& info) { return "Page" + std::to_string(info.param); });

}  // namespace
}  // namespace lserve
