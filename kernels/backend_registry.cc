#include "kernels/backend_registry.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#if LSERVE_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif

namespace lserve {

std::string_view BackendName(Backend backend) {
  switch (backend) {
    case Backend::kCpu:
      return "cpu";
    case Backend::kCuda:
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

std::vector<Backend> BuiltBackends() {
  std::vector<Backend> backends = {Backend::kCpu};
  if (CudaBuilt()) backends.push_back(Backend::kCuda);
  return backends;
}

int CudaDeviceCount() {
#if LSERVE_HAVE_CUDA
  return cuda::DeviceCount();
#else
  return 0;
#endif
}

absl::StatusOr<Backend> ParseBackend(std::string_view name) {
  if (name == BackendName(Backend::kCpu)) return Backend::kCpu;
  if (name == BackendName(Backend::kCuda)) {
    if (!CudaBuilt()) {
      return absl::FailedPreconditionError(
          "backend \"cuda\" is not available: this binary was built without CUDA "
          "(configure with nvcc on PATH or -DLSERVE_CUDA=ON)");
    }
    return Backend::kCuda;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown backend \"",
                                                 absl::string_view(name.data(), name.size()),
                                                 "\"; expected \"cpu\" or \"cuda\""));
}

}  // namespace lserve
