// Helpers shared by the engine and scheduler tests: a tiny synthetic engine and ids.
#ifndef LSERVE_TESTS_WORKER_ENGINE_TEST_UTIL_H_
#define LSERVE_TESTS_WORKER_ENGINE_TEST_UTIL_H_

#include <memory>
#include <vector>

#include "gtest/gtest.h"
#include "worker/engine.h"
#include "worker/model/synthetic_model.h"

namespace lserve::testing {

// The built-in synthetic model with LServe's attention defaults at page size 16.
inline std::unique_ptr<Engine> MakeTinyEngine(int64_t dense_pages = 0, int max_sequences = 4,
                                              bool prefix_caching = false) {
  EngineOptions options;
  options.num_threads = 2;
  options.attention.page_size = 16;  // LServe defaults otherwise: streaming heads on
  options.num_dense_pages = dense_pages;
  options.max_sequences = max_sequences;
  options.prefix_caching = prefix_caching;
  auto weights = MakeSyntheticWeights(TinySyntheticConfig(), 3);
  EXPECT_TRUE(weights.ok()) << weights.status();
  auto engine = Engine::Create(*std::move(weights), options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return *std::move(engine);
}

// Small windows and budget so that hybrid sparsity really drops keys at a few hundred
// tokens: streaming ratio 0.5, page 16 (logical 8), budget 64, sink 16, windows 64.
inline SparseAttentionConfig SmallHybrid() {
  SparseAttentionConfig c;
  c.streaming_ratio = 0.5f;
  c.page_size = 16;
  c.logical_page_size = 8;
  c.token_budget = 64;
  c.sink = 16;
  c.prefill_local = 64;
  c.decode_local = 64;
  c.reuse_interval = 4;
  return c;
}

inline std::vector<int32_t> Ids(int n, int salt) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back((i * 37 + salt * 11 + 5) % 500 + 3);
  return ids;
}

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_WORKER_ENGINE_TEST_UTIL_H_
