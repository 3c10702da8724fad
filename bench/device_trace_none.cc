// Builds without CUDA have no device to trace.
#include "bench/device_trace.h"

namespace lserve::bench {

absl::StatusOr<std::unique_ptr<DeviceTrace>> DeviceTrace::Start() {
  return absl::UnimplementedError("this build has no device tracer (built without CUDA)");
}

}  // namespace lserve::bench
