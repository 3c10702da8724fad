// Runs HybridAttention over a KvDriver's store the way the engine does: one plan per
// step, then the layer's attention.
#ifndef LSERVE_TESTS_WORKER_ATTENTION_ATTENTION_TEST_UTIL_H_
#define LSERVE_TESTS_WORKER_ATTENTION_ATTENTION_TEST_UTIL_H_

#include <memory>
#include <vector>

#include "common/memory_space.h"
#include "common/status_macros.h"
#include "gtest/gtest.h"
#include "tests/kernels/opaque_cpu_backend.h"
#include "tests/kvstore/kv_test_util.h"
#include "worker/attention/attention_plan.h"
#include "worker/attention/hybrid_attention.h"

namespace lserve::testing {

inline std::unique_ptr<HybridAttention> MakeAttention(KvDriver& driver,
                                                      const SparseAttentionConfig& config,
                                                      int num_q_heads, Backend* backend = nullptr) {
  auto attention = HybridAttention::Create(&driver.store(), config, num_q_heads,
                                           backend != nullptr ? backend : &driver.backend());
  EXPECT_TRUE(attention.ok()) << attention.status();
  return *std::move(attention);
}

inline void RunLayer(KvDriver& driver, HybridAttention& attention,
                     const std::vector<AttentionSequence>& batch, const float* q, float* out,
                     int layer = 0) {
  driver.backend().BeginStep();
  AttentionPlan plan;
  ASSERT_TRUE(plan.Build(driver.store(), batch, attention.config(), &driver.backend()).ok());
  const absl::Status status = attention.Run(layer, plan, q, out);
  ASSERT_TRUE(status.ok()) << status;
}

}  // namespace lserve::testing

#endif  // LSERVE_TESTS_WORKER_ATTENTION_ATTENTION_TEST_UTIL_H_
