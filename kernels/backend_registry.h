// The one place that says which compute backends this build has and how they are named.
#ifndef LSERVE_KERNELS_BACKEND_REGISTRY_H_
#define LSERVE_KERNELS_BACKEND_REGISTRY_H_

#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace lserve {

enum class Backend { kCpu, kCuda };

// "cpu" or "cuda": the names ParseBackend accepts.
std::string_view BackendName(Backend backend);

// The backends compiled into this binary, kCpu first. kCpu is always present.
std::vector<Backend> BuiltBackends();

// True when the CUDA backend was compiled in (nvcc was found at configure time).
bool CudaBuilt();

// Number of CUDA devices usable by this process. 0 when CUDA was not compiled in, or when
// no driver or device is present; never fails and prints nothing.
int CudaDeviceCount();

// "cpu" → kCpu, "cuda" → kCuda (exact, lowercase). InvalidArgument for any other name;
// FailedPrecondition for "cuda" when the CUDA backend was not compiled in.
absl::StatusOr<Backend> ParseBackend(std::string_view name);

}  // namespace lserve

#endif  // LSERVE_KERNELS_BACKEND_REGISTRY_H_
