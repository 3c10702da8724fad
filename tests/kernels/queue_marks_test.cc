// Queue marks as another thread follows them: a wait ends when its mark is placed, when
// the step is abandoned, or at its deadline.
#include "kernels/queue_marks.h"

#include <thread>

#include "gtest/gtest.h"

namespace lserve {
namespace {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

TEST(QueueMarksTest, AWaitEndsWhenItsMarkIsPlacedOnAnotherThread) {
  QueueMarks marks(3);
  std::thread engine([&] {
    for (int i = 0; i < 3; ++i) {
      std::this_thread::sleep_for(milliseconds(5));
      ASSERT_TRUE(marks.Place(i).ok());
    }
  });
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<void*> placed = marks.WaitPlaced(i, Clock::now() + std::chrono::seconds(10));
    ASSERT_TRUE(placed.ok()) << placed.status();
    EXPECT_EQ(*placed, nullptr);  // host marks carry no event
    EXPECT_GE(marks.num_placed(), i + 1);
  }
  engine.join();
  EXPECT_EQ(marks.num_placed(), 3);
}

TEST(QueueMarksTest, AnAbandonedStepFailsTheWaitsForMarksItNeverPlaced) {
  QueueMarks marks(4);
  ASSERT_TRUE(marks.Place(0).ok());
  std::thread engine([&] {
    std::this_thread::sleep_for(milliseconds(5));
    marks.Abandon(absl::InternalError("the GEMM failed"));
  });
  absl::StatusOr<void*> waited = marks.WaitPlaced(2, Clock::now() + std::chrono::seconds(10));
  engine.join();
  EXPECT_EQ(waited.status().code(), absl::StatusCode::kAborted);
  EXPECT_NE(waited.status().message().find("the GEMM failed"), std::string_view::npos);
  // A mark placed before the failure still counts.
  EXPECT_TRUE(marks.WaitPlaced(0, Clock::now()).ok());
}

TEST(QueueMarksTest, WaitsEndAtTheirDeadlineAndIndicesAreChecked) {
  QueueMarks marks(2);
  const Clock::time_point start = Clock::now();
  EXPECT_EQ(marks.WaitPlaced(1, start + milliseconds(20)).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  EXPECT_GE(Clock::now() - start, milliseconds(20));
  EXPECT_EQ(marks.WaitPlaced(2, Clock::now()).status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(marks.Place(-1).code(), absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace lserve
