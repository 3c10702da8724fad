#include <gtest/gtest.h>

#include "bench/device_trace.h"

namespace lserve::bench {
namespace {

TEST(DeviceTraceSummaryTest, UnionOfOverlappingIntervalsIsBusyTime) {
  // Window [1000, 2000): kernels 1000-1300 and 1200-1400 overlap (400 busy), a copy
  // 1500-1600 (100 busy), then idle to the end.
  const DeviceTraceSummary s = SummarizeDeviceActivity(
      {{1200, 1400, true}, {1000, 1300, true}, {1500, 1600, false}}, {1000}, 2000);
  EXPECT_EQ(s.steps, 1);
  EXPECT_EQ(s.kernels, 2);
  EXPECT_EQ(s.copies, 1);
  EXPECT_DOUBLE_EQ(s.window_ms, 1e-3);
  EXPECT_DOUBLE_EQ(s.busy_ms, 500e-6);
  EXPECT_DOUBLE_EQ(s.busy_fraction, 0.5);
  EXPECT_DOUBLE_EQ(s.max_gap_us, 0.4);  // 1600 to the window's end
}

TEST(DeviceTraceSummaryTest, ActivityOutsideTheWindowIsClippedOrDropped) {
  const DeviceTraceSummary s = SummarizeDeviceActivity(
      {{500, 900, true}, {800, 1100, true}, {1900, 2500, true}}, {1000}, 2000);
  EXPECT_EQ(s.kernels, 2);
  EXPECT_DOUBLE_EQ(s.busy_ms, 200e-6);  // 1000-1100 and 1900-2000
  EXPECT_DOUBLE_EQ(s.max_gap_us, 0.8);
}

TEST(DeviceTraceSummaryTest, StepGapsRunFromOneStepsLastEndToTheNextsFirstStart) {
  // Step 0 marked at 0: activity 10-50 and 60-100. Step 1 marked at 100: 130-200.
  // Step 2 marked at 200: 210-300. Gaps between steps: 30 and 10 ns.
  const DeviceTraceSummary s = SummarizeDeviceActivity(
      {{10, 50, true}, {60, 100, true}, {130, 200, true}, {210, 300, true}}, {0, 100, 200}, 300);
  EXPECT_EQ(s.steps, 3);
  EXPECT_DOUBLE_EQ(s.mean_step_gap_us, 0.02);
  EXPECT_DOUBLE_EQ(s.max_step_gap_us, 0.03);
  EXPECT_DOUBLE_EQ(s.busy_fraction, (40 + 40 + 70 + 90) / 300.0);
}

TEST(DeviceTraceSummaryTest, AStepThatLagsItsMarkCountsNoNegativeGap) {
  // Step 1 is marked at 100 while step 0's kernel runs until 150; step 1 starts at 150.
  const DeviceTraceSummary s =
      SummarizeDeviceActivity({{0, 150, true}, {150, 200, true}}, {0, 100}, 200);
  EXPECT_DOUBLE_EQ(s.mean_step_gap_us, 0.0);
  EXPECT_DOUBLE_EQ(s.busy_fraction, 1.0);
}

TEST(DeviceTraceSummaryTest, IdleTimeIsAttributedToTheActivitiesAroundIt) {
  // Two steps: gemm 0-100, idle 40, copy 140-150, idle 10, attention 160-200 | gemm
  // 200-300, idle 40, copy 340-350, attention 350-400. The copy overlapping the gemm's end
  // in step 1 (290-295) ends no idle stretch.
  const DeviceTraceSummary s = SummarizeDeviceActivity({{0, 100, true, "gemm"},
                                                        {140, 150, false, "copy HtoD"},
                                                        {160, 200, true, "attention"},
                                                        {200, 300, true, "gemm"},
                                                        {290, 295, false, "copy HtoD"},
                                                        {340, 350, false, "copy HtoD"},
                                                        {350, 400, true, "attention"}},
                                                       {0, 200}, 420);
  ASSERT_EQ(s.idle_by_neighbours.size(), 3u);
  EXPECT_EQ(s.idle_by_neighbours[0].first, "gemm -> copy HtoD");
  EXPECT_DOUBLE_EQ(s.idle_by_neighbours[0].second, 0.08 / 2);  // 80 ns over 2 steps
  EXPECT_EQ(s.idle_by_neighbours[1].first, "attention -> (window end)");
  EXPECT_DOUBLE_EQ(s.idle_by_neighbours[1].second, 0.02 / 2);
  EXPECT_EQ(s.idle_by_neighbours[2].first, "copy HtoD -> attention");
  EXPECT_DOUBLE_EQ(s.idle_by_neighbours[2].second, 0.01 / 2);
  // Busy time by name, overlaps to the earlier start: gemm 200 ns, attention 90, the copies
  // 20 (the one inside the gemm adds nothing), over 2 steps.
  ASSERT_EQ(s.busy_by_activity.size(), 3u);
  EXPECT_EQ(s.busy_by_activity[0].first, "gemm");
  EXPECT_DOUBLE_EQ(s.busy_by_activity[0].second, 0.2 / 2);
  EXPECT_EQ(s.busy_by_activity[1].first, "attention");
  EXPECT_DOUBLE_EQ(s.busy_by_activity[1].second, 0.09 / 2);
  EXPECT_EQ(s.busy_by_activity[2].first, "copy HtoD");
  EXPECT_DOUBLE_EQ(s.busy_by_activity[2].second, 0.02 / 2);
}

TEST(DeviceTraceSummaryTest, AnEmptyWindowSummarizesToZeros) {
  const DeviceTraceSummary s = SummarizeDeviceActivity({{0, 10, true}}, {}, 100);
  EXPECT_EQ(s.steps, 0);
  EXPECT_EQ(s.kernels, 0);
  EXPECT_DOUBLE_EQ(s.busy_fraction, 0.0);
}

}  // namespace
}  // namespace lserve::bench
