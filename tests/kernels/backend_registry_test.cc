#include "kernels/backend_registry.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace lserve {
namespace {

// LSERVE_EXPECT_CUDA comes from the build configuration (tests/kernels/CMakeLists.txt), so
// the library and the configure step cannot silently disagree.
constexpr bool kExpectCuda = LSERVE_EXPECT_CUDA;

TEST(BackendRegistryTest, CpuIsAlwaysBuiltAndFirst) {
  const std::vector<Backend> built = BuiltBackends();
  ASSERT_FALSE(built.empty());
  EXPECT_EQ(built.front(), Backend::kCpu);
}

TEST(BackendRegistryTest, CudaBuiltMatchesConfiguration) {
  EXPECT_EQ(CudaBuilt(), kExpectCuda);
  const std::vector<Backend> built = BuiltBackends();
  EXPECT_EQ(built.size(), kExpectCuda ? 2u : 1u);
  if (kExpectCuda) {
    EXPECT_EQ(built.back(), Backend::kCuda);
  }
}

TEST(BackendRegistryTest, DeviceCountIsZeroWithoutCuda) {
  const int count = CudaDeviceCount();
  EXPECT_GE(count, 0);
  if (!CudaBuilt()) {
    EXPECT_EQ(count, 0);
  }
  // Asking twice is harmless (no sticky error, same answer).
  EXPECT_EQ(CudaDeviceCount(), count);
}

TEST(BackendRegistryTest, ParsesNamesRoundTrip) {
  for (Backend backend : BuiltBackends()) {
    const absl::StatusOr<Backend> parsed = ParseBackend(BackendName(backend));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, backend);
  }
}

TEST(BackendRegistryTest, CudaIsFailedPreconditionWhenNotBuilt) {
  const absl::StatusOr<Backend> parsed = ParseBackend("cuda");
  if (CudaBuilt()) {
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, Backend::kCuda);
  } else {
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kFailedPrecondition);
  }
}

TEST(BackendRegistryTest, RejectsUnknownNames) {
  for (const char* name : {"", "CPU", "Cuda", "gpu", "rocm", "cpu "}) {
    const absl::StatusOr<Backend> parsed = ParseBackend(name);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << "'" << name << "'";
  }
  EXPECT_NE(ParseBackend("gpu").status().message().find("\"gpu\""), std::string::npos);
}

}  // namespace
}  // namespace lserve
