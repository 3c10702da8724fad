#include "worker/attention/head_classifier.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "gtest/gtest.h"

namespace lserve {
namespace {

const std::string kPatterns = LSERVE_SHARED_DIR "/attn_patterns/";

int CountStreaming(const HeadLayout& layout) { return layout.TotalStreamingHeads(); }

TEST(HeadClassifierTest, RealGateFilesSplitAtTheGlobalQuantile) {
  for (const char* model : {"Llama-3-8B-Instruct-Gradient-1048k", "Meta-Llama-3.1-8B-Instruct",
                            "Mistral-7B-Instruct-v0.2"}) {
    auto gates = ReadGateFile(kPatterns + model + "/full_attention_heads.tsv", 32, 8);
    ASSERT_TRUE(gates.ok()) << gates.status();
    for (float s : {0.0f, 0.25f, 0.5f, 0.75f, 1.0f}) {
      const HeadLayout layout = ClassifyHeads(*gates, s);
      EXPECT_EQ(CountStreaming(layout), static_cast<int>(std::lround(s * 256))) << model;
      // Every streaming head's gate is <= every dense head's gate.
      float max_streaming = -1.0f, min_dense = 2.0f;
      for (int l = 0; l < 32; ++l) {
        for (int h = 0; h < 8; ++h) {
          const float g = std::clamp((*gates)[l][h], 0.0f, 1.0f);
          if (layout.layers[l].streaming[h]) {
            max_streaming = std::max(max_streaming, g);
          } else {
            min_dense = std::min(min_dense, g);
          }
        }
      }
      if (s > 0.0f && s < 1.0f) {
        EXPECT_LE(max_streaming, min_dense) << model << " s=" << s;
      }
    }
  }
}

TEST(HeadClassifierTest, PerLayerCountsVaryAndSlotsArePacked) {
  auto gates =
      ReadGateFile(kPatterns + "Meta-Llama-3.1-8B-Instruct/full_attention_heads.tsv", 32, 8);
  ASSERT_TRUE(gates.ok());
  const HeadLayout layout = ClassifyHeads(*gates, 0.5f);
  std::set<int> per_layer;
  for (const auto& layer : layout.layers) {
    per_layer.insert(layer.num_streaming);
    int dense = 0, streaming = 0;
    for (int h = 0; h < 8; ++h) {
      EXPECT_EQ(layer.slot[h], layer.streaming[h] ? streaming++ : dense++);
    }
  }
  EXPECT_GT(per_layer.size(), 1u);
}

TEST(HeadClassifierTest, TiesBreakByLayerThenHead) {
  const GateTable gates = {{0.5f, 0.5f}, {0.5f, 0.5f}};
  const HeadLayout layout = ClassifyHeads(gates, 0.5f);
  EXPECT_TRUE(layout.layers[0].streaming[0]);
  EXPECT_TRUE(layout.layers[0].streaming[1]);
  EXPECT_FALSE(layout.layers[1].streaming[0]);
  // Clipping: out-of-range gates count as 0 and 1.
  const HeadLayout clipped = ClassifyHeads({{-3.0f, 7.0f}}, 0.5f);
  EXPECT_TRUE(clipped.layers[0].streaming[0]);
  EXPECT_FALSE(clipped.layers[0].streaming[1]);
}

TEST(HeadClassifierTest, SeededLayoutIsDeterministicWithFixedCountPerLayer) {
  const HeadLayout a = SeededHeadLayout(6, 8, 0.5f, 11), b = SeededHeadLayout(6, 8, 0.5f, 11);
  const HeadLayout c = SeededHeadLayout(6, 8, 0.5f, 12);
  bool differs = false;
  for (int l = 0; l < 6; ++l) {
    EXPECT_EQ(a.layers[l].num_streaming, 4);
    EXPECT_EQ(a.layers[l].streaming, b.layers[l].streaming);
    differs |= a.layers[l].streaming != c.layers[l].streaming;
  }
  EXPECT_TRUE(differs);
}

TEST(HeadClassifierTest, MalformedGateFilesGiveClearErrors) {
  auto wrong_rows = ParseGateTable("1\t0\n0\t1\n", "g.tsv", 3, 2);
  EXPECT_EQ(wrong_rows.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong_rows.status().message().find("3 layers"), std::string::npos);
  auto wrong_columns = ParseGateTable("1\t0\t1\n", "g.tsv", 1, 2);
  EXPECT_EQ(wrong_columns.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong_columns.status().message().find("g.tsv:1"), std::string::npos);
  EXPECT_EQ(ParseGateTable("1\tnan\n", "g.tsv", 1, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseGateTable("1\tabc\n", "g.tsv", 1, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadGateFile("/nonexistent/gates.tsv", 1, 2).status().code(),
            absl::StatusCode::kNotFound);
  // The real file against the wrong model geometry.
  EXPECT_EQ(ReadGateFile(kPatterns + "Llama-2-7B-32K-Instruct/full_attention_heads.tsv", 32, 8)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace lserve
