// The one place that says which compute backends this build has, how they are named, and
// creates them.
#ifndef LSERVE_KERNELS_BACKEND_REGISTRY_H_
#define LSERVE_KERNELS_BACKEND_REGISTRY_H_

#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace lserve {

enum class BackendKind { kCpu, kCuda };

// "cpu" or "cuda": the names ParseBackend accepts.
std::string_view BackendName(BackendKind backend);

// The backends compiled into this binary, kCpu first. kCpu is always present.
std::vector<BackendKind> BuiltBackends();

// True when the CUDA backend was compiled in (nvcc was found at configure time).
bool CudaBuilt();

// Number of CUDA devices usable by this process. 0 when CUDA was not compiled in, or when
// no driver or device is present; never fails and prints nothing.
int CudaDeviceCount();

// "cpu" → kCpu, "cuda" → kCuda (exact, lowercase). InvalidArgument for any other name;
// FailedPrecondition for "cuda" when the CUDA backend was not compiled in.
absl::StatusOr<BackendKind> ParseBackend(std::string_view name);

struct BackendOptions {
  int num_threads = 0;  // cpu: worker threads, 0 one per core
  int device = 0;       // cuda: device ordinal
};

// A backend by name; FailedPrecondition when it is not built or has no device.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view name,
                                                       const BackendOptions& options = {});

}  // namespace lserve

#endif  // LSERVE_KERNELS_BACKEND_REGISTRY_H_
