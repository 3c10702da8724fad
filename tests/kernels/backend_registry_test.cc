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
  const std::vector<BackendKind> built = BuiltBackends();
  ASSERT_FALSE(built.empty());
  EXPECT_EQ(built.front(), BackendKind::kCpu);
}

TEST(BackendRegistryTest, CudaBuiltMatchesConfiguration) {
  EXPECT_EQ(CudaBuilt(), kExpectCuda);
  const std::vector<BackendKind> built = BuiltBackends();
  EXPECT_EQ(built.size(), kExpectCuda ? 2u : 1u);
  if (kExpectCuda) {
    EXPECT_EQ(built.back(), BackendKind::kCuda);
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
  for (BackendKind backend : BuiltBackends()) {
    const absl::StatusOr<BackendKind> parsed = ParseBackend(BackendName(backend));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, backend);
  }
}

TEST(BackendRegistryTest, CudaIsFailedPreconditionWhenNotBuilt) {
  const absl::StatusOr<BackendKind> parsed = ParseBackend("cuda");
  if (CudaBuilt()) {
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, BackendKind::kCuda);
  } else {
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kFailedPrecondition);
  }
}

TEST(BackendRegistryTest, RejectsUnknownNames) {
  for (const char* name : {"", "CPU", "Cuda", "gpu", "rocm", "cpu "}) {
    const absl::StatusOr<BackendKind> parsed = ParseBackend(name);
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument) << "'" << name << "'";
  }
  EXPECT_NE(ParseBackend("gpu").status().message().find("\"gpu\""), std::string::npos);
}

}  // namespace
}  // namespace lserve

namespace lserve {
namespace {

TEST(BackendRegistryTest, CreatesTheCpuBackendByName) {
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend("cpu", {2, 0});
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->name(), "cpu");
  EXPECT_EQ((*backend)->compute_dtype(), DType::kF32);
  EXPECT_TRUE((*backend)->memory()->host_accessible());
  EXPECT_TRUE((*backend)->CheckEngineSupport().ok());
  EXPECT_TRUE((*backend)->CheckAttentionHeads(4, 2, 16).ok());  // any head dim
  EXPECT_EQ((*backend)->QueryMemory().status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(CreateBackend("cpu", {-1, 0}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CreateBackend("tpu").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BackendRegistryTest, CudaBackendNeedsADeviceAndServesHeadDims64And128) {
  absl::StatusOr<std::unique_ptr<Backend>> backend = CreateBackend("cuda");
  if (!CudaBuilt() || CudaDeviceCount() == 0) {
    EXPECT_EQ(backend.status().code(), absl::StatusCode::kFailedPrecondition);
    return;
  }
  ASSERT_TRUE(backend.ok()) << backend.status();
  EXPECT_EQ((*backend)->compute_dtype(), DType::kBF16);
  EXPECT_FALSE((*backend)->memory()->host_accessible());
  EXPECT_TRUE((*backend)->CheckEngineSupport().ok());
  EXPECT_TRUE((*backend)->CheckAttentionHeads(32, 8, 128).ok());
  EXPECT_TRUE((*backend)->CheckAttentionHeads(8, 8, 64).ok());
  const absl::Status head_dim = (*backend)->CheckAttentionHeads(4, 2, 16);
  EXPECT_EQ(head_dim.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(head_dim.message().find("--backend=cpu"), std::string::npos) << head_dim;
  EXPECT_EQ((*backend)->CheckAttentionHeads(16, 1, 128).code(),
            absl::StatusCode::kInvalidArgument);  // decode packs at most 8 heads per group
  absl::StatusOr<BackendMemoryInfo> memory = (*backend)->QueryMemory();
  ASSERT_TRUE(memory.ok()) << memory.status();
  EXPECT_GT(memory->total_bytes, 0);
  EXPECT_GT(memory->free_bytes, 0);
  EXPECT_LE(memory->free_bytes, memory->total_bytes);
}

}  // namespace
}  // namespace lserve
