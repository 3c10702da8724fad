#include "kvstore/page_allocator.h"

#include <set>

#include "gtest/gtest.h"

namespace lserve {
namespace {

TEST(PageAllocatorTest, AllocatesEveryPageOnceThenReportsExhaustion) {
  PageAllocator allocator(5);
  std::set<PageId> pages;
  for (int i = 0; i < 5; ++i) pages.insert(*allocator.Allocate());
  EXPECT_EQ(pages.size(), 5u);
  EXPECT_EQ(allocator.num_free(), 0);
  EXPECT_EQ(allocator.Allocate().status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(PageAllocatorTest, SharedPageIsFreedByTheLastHolder) {
  PageAllocator allocator(2);
  const PageId page = *allocator.Allocate();
  ASSERT_TRUE(allocator.AddRef(page).ok());
  EXPECT_EQ(allocator.ref_count(page), 2);
  ASSERT_TRUE(allocator.Release(page).ok());
  EXPECT_EQ(allocator.num_free(), 1);
  ASSERT_TRUE(allocator.Release(page).ok());
  EXPECT_EQ(allocator.num_free(), 2);
}

TEST(PageAllocatorTest, AllocateManyIsAllOrNothing) {
  PageAllocator allocator(4);
  EXPECT_EQ(allocator.AllocateMany(5).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(allocator.num_free(), 4);
  EXPECT_EQ(allocator.AllocateMany(4)->size(), 4u);
}

TEST(PageAllocatorTest, MisuseIsAnErrorNotACrash) {
  PageAllocator allocator(2);
  EXPECT_EQ(allocator.Release(0).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(allocator.AddRef(7).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(allocator.Release(-1).code(), absl::StatusCode::kInvalidArgument);
  const PageId page = *allocator.Allocate();
  ASSERT_TRUE(allocator.Release(page).ok());
  EXPECT_EQ(allocator.Release(page).code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace lserve
