// The NIAH prompt convention, the variant names, and a small retrieval grid through the
// engine on the committed byte-level model: dense must retrieve at least 90% of needles.
#include "eval/niah.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "eval/niah_variants.h"
#include "gtest/gtest.h"

namespace lserve {
namespace {

const std::string kFixture = LSERVE_SOURCE_DIR "/tests/fixtures/niah_byte_llama";

std::string Filler(size_t bytes) {
  std::string text;
  while (text.size() < bytes) text += "Plain words of filler text, no numbers here. ";
  return text.substr(0, bytes);
}

TEST(NiahSampleTest, PromptHasTheContextLengthAndOneNeedleAtItsDepth) {
  const std::string haystack = Filler(4000);
  for (double depth : {0.0, 0.3, 1.0}) {
    absl::StatusOr<NiahSample> sample = MakeNiahSample(haystack, 1000, depth, 7);
    ASSERT_TRUE(sample.ok()) << sample.status();
    const std::vector<int32_t>& p = sample->prompt;
    ASSERT_EQ(p.size(), 1000u);
    EXPECT_EQ(p.front(), kNiahBos);
    EXPECT_EQ(p.back(), kNiahKey);
    EXPECT_EQ(std::count(p.begin(), p.end(), kNiahKey), 2);
    EXPECT_EQ(std::count(p.begin(), p.end(), kNiahQuery), 1);
    // The digits after the needle's KEY are the key.
    const auto key_at = std::find(p.begin(), p.end(), kNiahKey);
    std::string digits(key_at + 1, key_at + 1 + kNiahKeyDigits);
    EXPECT_EQ(digits, sample->key);
    EXPECT_EQ(std::set<char>(digits.begin(), digits.end()).size(), size_t{kNiahKeyDigits});
    const int64_t question_at = std::find(p.begin(), p.end(), kNiahQuery) - p.begin();
    if (depth == 0.0) {
      EXPECT_EQ(sample->needle_position, 1);
    }
    // KEY, 7 digits and ". " end the needle; at depth 1 the question follows at once.
    if (depth == 1.0) {
      EXPECT_EQ(question_at, static_cast<int64_t>(key_at - p.begin()) + 10);
    }
  }
}

TEST(NiahSampleTest, SeedsPickTheWindowAndKey) {
  const std::string haystack = Filler(8000);
  auto a = MakeNiahSample(haystack, 2000, 0.5, 1);
  auto b = MakeNiahSample(haystack, 2000, 0.5, 1);
  auto c = MakeNiahSample(haystack, 2000, 0.5, 2);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->prompt, b->prompt);
  EXPECT_NE(a->key, c->key);
}

TEST(NiahSampleTest, RejectsContextsThatCannotHoldTheTask) {
  EXPECT_FALSE(MakeNiahSample(Filler(4000), 40, 0.5, 1).ok());
  EXPECT_FALSE(MakeNiahSample(Filler(500), 2000, 0.5, 1).ok());
  EXPECT_FALSE(MakeNiahSample(Filler(4000), 1000, 1.5, 1).ok());
}

TEST(NiahSampleTest, HaystackDropsDigitsAndJoinsFilesInOrder) {
  const std::string path = ::testing::TempDir() + "/niah_haystack.txt";
  const std::string second = ::testing::TempDir() + "/niah_haystack_2.txt";
  std::ofstream(path) << "In 1984 there were 12 of them.";
  std::ofstream(second) << " Then 3.";
  absl::StatusOr<std::string> text = ReadHaystack(path);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "In  there were  of them.");
  absl::StatusOr<std::string> joined = ReadHaystack(second + "," + path);
  ASSERT_TRUE(joined.ok()) << joined.status();
  EXPECT_EQ(*joined, " Then .In  there were  of them.");
  EXPECT_FALSE(ReadHaystack(path + ".missing").ok());
}

TEST(NiahVariantTest, NamesSetOneKnobOverTheHybridDefaults) {
  absl::StatusOr<SparseAttentionConfig> dense = NiahVariant("dense", "g.tsv");
  ASSERT_TRUE(dense.ok());
  EXPECT_FALSE(dense->streaming_heads);
  EXPECT_FALSE(dense->page_selection);
  absl::StatusOr<SparseAttentionConfig> mixed = NiahVariant("ratio0.25+budget1024+reuse8", "g");
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  EXPECT_FLOAT_EQ(mixed->streaming_ratio, 0.25f);
  EXPECT_EQ(mixed->token_budget, 1024);
  EXPECT_EQ(mixed->reuse_interval, 8);
  EXPECT_EQ(mixed->gate_file, "g");
  absl::StatusOr<SparseAttentionConfig> random = NiahVariant("random3", "g");
  ASSERT_TRUE(random.ok());
  EXPECT_TRUE(random->gate_file.empty());
  EXPECT_EQ(random->head_seed, 3u);
  EXPECT_FALSE(NiahVariant("window9", "g").ok());
  EXPECT_FALSE(NiahVariant("ratio2", "g").ok());
}

// The CI grid: short contexts, needles at the start, middle and end.
TEST(NiahGridTest, DenseAndLearnedHybridRetrieveOnTheFixture) {
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(kFixture);
  ASSERT_TRUE(weights.ok()) << weights.status();
  // The held-out essays, read from ../shared (kNiahHeldOutHaystack, from the source root).
  std::string paths;
  for (absl::string_view file : absl::StrSplit(kNiahHeldOutHaystack, ',')) {
    absl::StrAppend(&paths, paths.empty() ? "" : ",", LSERVE_SOURCE_DIR "/", file);
  }
  absl::StatusOr<std::string> haystack = ReadHaystack(paths);
  ASSERT_TRUE(haystack.ok()) << haystack.status();
  NiahGridSpec spec;
  spec.contexts = {512, 1024};
  spec.depths = {0.0, 0.5, 1.0};
  spec.trials = 2;
  spec.prefill_chunk = 512;
  for (const char* variant : {"dense", "hybrid"}) {
    absl::StatusOr<SparseAttentionConfig> attention =
        NiahVariant(variant, kFixture + "/full_attention_heads.tsv");
    ASSERT_TRUE(attention.ok()) << attention.status();
    EngineOptions options;
    options.num_threads = 2;
    options.attention = *attention;
    absl::StatusOr<NiahGridResult> result = RunNiahGrid(*weights, options, *haystack, spec);
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->trials, 12);
    EXPECT_GE(result->Accuracy(), 0.9) << variant << "\n" << FormatNiahGrid(spec, *result);
  }
}

}  // namespace
}  // namespace lserve
