#include "kernels/cuda/device_buffer.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

#include "kernels/cuda/device.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace lserve::cuda {
namespace {

using testing::CudaDeviceTest;

class DeviceBufferTest : public CudaDeviceTest {};

TEST_F(DeviceBufferTest, RoundTripsHostData) {
  std::vector<int32_t> host(1000);
  std::iota(host.begin(), host.end(), -500);
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer buffer, Upload(host));
  EXPECT_EQ(buffer.bytes(), host.size() * sizeof(int32_t));
  EXPECT_NE(buffer.data(), nullptr);
  LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<int32_t> back, Download<int32_t>(buffer, host.size()));
  EXPECT_EQ(back, host);
}

TEST_F(DeviceBufferTest, FillSetsEveryByte) {
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer buffer, DeviceBuffer::Allocate(37));
  LSERVE_ASSERT_OK(buffer.Fill(0xAB));
  LSERVE_ASSERT_OK_AND_ASSIGN(std::vector<uint8_t> back, Download<uint8_t>(buffer, 37));
  EXPECT_EQ(back, std::vector<uint8_t>(37, 0xAB));
}

TEST_F(DeviceBufferTest, MoveTransfersOwnership) {
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer a, DeviceBuffer::Allocate(64));
  void* const data = a.data();
  DeviceBuffer b = std::move(a);
  EXPECT_EQ(b.data(), data);
  EXPECT_EQ(b.bytes(), 64u);
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): moved-from is empty
  EXPECT_EQ(a.bytes(), 0u);
  LSERVE_ASSERT_OK(SynchronizeStream(nullptr));
}

// Neither case reaches the CUDA runtime, so these run without a GPU.
TEST(DeviceBufferHostTest, EmptyAllocationIsNull) {
  LSERVE_ASSERT_OK_AND_ASSIGN(DeviceBuffer buffer, DeviceBuffer::Allocate(0));
  EXPECT_EQ(buffer.data(), nullptr);
  EXPECT_EQ(buffer.bytes(), 0u);
  LSERVE_ASSERT_OK(buffer.Fill(0));
}

TEST(DeviceBufferHostTest, OversizedCopiesAreOutOfRange) {
  DeviceBuffer empty;
  const int32_t value = 1;
  EXPECT_EQ(empty.CopyFromHost(&value, sizeof(value)).code(), absl::StatusCode::kOutOfRange);
  int32_t out = 0;
  EXPECT_EQ(empty.CopyToHost(&out, sizeof(out)).code(), absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace lserve::cuda
