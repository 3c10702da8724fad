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

inline std::vector<int32_t> Ids(int n, int salt) {
  std::vector<int32_t> ids;
  for (int i = 0; i < n; ++i) ids.push_back((i * 37 + salt * 11 + 5) % 500 + 3);
  return ids;
}

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_WORKER_ENGINE_TEST_UTIL_H_
