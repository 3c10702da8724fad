#include "kernels/backend_registry.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"

#if LSERVE_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/device.h"
#endif

namespace lserve {

std::string_view BackendName(BackendKind backend) {
  switch (backend) {
    case BackendKind::kCpu:
      return "cpu";
    case BackendKind::kCuda:
      return "cuda";
  }
  return "unknown";
}

bool CudaBuilt() {
#if LSERVE_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

std::vector<BackendKind> BuiltBackends() {
  std::vector<BackendKind> backends = {BackendKind::kCpu};
  if (CudaBuilt()) backends.push_back(BackendKind::kCuda);
  return backends;
}

int CudaDeviceCount() {
#if LSERVE_HAVE_CUDA
  return cuda::DeviceCount();
#else
  return 0;
#endif
}

absl::StatusOr<BackendKind> ParseBackend(std::string_view name) {
  if (name == BackendName(BackendKind::kCpu)) return BackendKind::kCpu;
  if (name == BackendName(BackendKind::kCuda)) {
    if (!CudaBuilt()) {
      return absl::FailedPreconditionError(
          "backend \"cuda\" is not available: this binary was built without CUDA "
          "(configure with nvcc on PATH or -DLSERVE_CUDA=ON)");
    }
    return BackendKind::kCuda;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown backend \"",
                                                 absl::string_view(name.data(), name.size()),
                                                 "\"; expected \"cpu\" or \"cuda\""));
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view name,
                                                       const BackendOptions& options) {
  absl::StatusOr<BackendKind> kind = ParseBackend(name);
  if (!kind.ok()) return kind.status();
  if (*kind == BackendKind::kCpu) {
    if (options.num_threads < 0 || options.num_threads > 1024) {
      return absl::InvalidArgumentError(absl::StrCat(
          "num_threads must be in [0, 1024] (0: one per core), got ", options.num_threads));
    }
    return std::unique_ptr<Backend>(new CpuBackend(options.num_threads));
  }
#if LSERVE_HAVE_CUDA
  return cuda::CreateCudaBackend(options.device);
#else
  return absl::FailedPreconditionError("backend \"cuda\" is not built");
#endif
}

}  // namespace lserve
