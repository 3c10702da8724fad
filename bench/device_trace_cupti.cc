// The device tracer on CUPTI's activity API: kernels (concurrent kind, so tracing does
// not serialize them), memcpys and memsets, with start and end on the device clock.
#include <cuda_runtime_api.h>
#include <cupti.h>
#include <cxxabi.h>

#include <cstdlib>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"
#include "bench/device_trace.h"

namespace lserve::bench {
namespace {

constexpr CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
                                         CUPTI_ACTIVITY_KIND_MEMCPY, CUPTI_ACTIVITY_KIND_MEMSET};
constexpr size_t kBufferBytes = 8 << 20;

std::mutex recorded_mu;
std::vector<DeviceInterval>* recorded = nullptr;  // the running trace's records

// "ns::(anonymous namespace)::Kernel<1, 2>(Args)" -> "Kernel".
std::string ShortKernelName(const char* mangled) {
  if (mangled == nullptr) return "kernel";
  int status = 0;
  char* demangled = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string name = status == 0 && demangled != nullptr ? demangled : mangled;
  std::free(demangled);
  // Cut the arguments and template arguments: the first '(' or '<' outside a namespace.
  const size_t anonymous = name.rfind("(anonymous namespace)::");
  const size_t from = anonymous == std::string::npos ? 0 : anonymous + 23;
  name = name.substr(0, name.find_first_of("(<", from));
  const size_t colon = name.rfind("::");
  return colon == std::string::npos ? name : name.substr(colon + 2);
}

const char* CopyName(uint8_t kind) {
  switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD:
      return "copy HtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH:
      return "copy DtoH";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD:
      return "copy DtoD";
    default:
      return "copy";
  }
}

void CUPTIAPI BufferRequested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer != nullptr ? kBufferBytes : 0;
  *max_records = 0;
}

void CUPTIAPI BufferCompleted(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::vector<DeviceInterval> parsed;
  CUpti_Activity* record = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    switch (record->kind) {
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
        const auto* kernel = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
        parsed.push_back({kernel->start, kernel->end, true, ShortKernelName(kernel->name)});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        const auto* copy = reinterpret_cast<const CUpti_ActivityMemcpy6*>(record);
        parsed.push_back({copy->start, copy->end, false, CopyName(copy->copyKind)});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        const auto* set = reinterpret_cast<const CUpti_ActivityMemset4*>(record);
        parsed.push_back({set->start, set->end, false, "memset"});
        break;
      }
      default:
        break;
    }
  }
  std::free(buffer);
  std::lock_guard<std::mutex> lock(recorded_mu);
  if (recorded != nullptr) recorded->insert(recorded->end(), parsed.begin(), parsed.end());
}

absl::Status CuptiStatus(CUptiResult result, const char* what) {
  if (result == CUPTI_SUCCESS) return absl::OkStatus();
  const char* message = nullptr;
  cuptiGetResultString(result, &message);
  return absl::InternalError(
      absl::StrCat(what, ": ", message != nullptr ? message : "CUPTI error"));
}

uint64_t Now() {
  uint64_t timestamp = 0;
  cuptiGetTimestamp(&timestamp);
  return timestamp;
}

class CuptiTrace final : public DeviceTrace {
 public:
  ~CuptiTrace() override {
    if (!finished_) (void)Finish();
  }
  absl::Status Begin() {
    {
      std::lock_guard<std::mutex> lock(recorded_mu);
      if (recorded != nullptr) return absl::FailedPreconditionError("a device trace is running");
      recorded = &activity_;
    }
    absl::Status status =
        CuptiStatus(cuptiActivityRegisterCallbacks(BufferRequested, BufferCompleted),
                    "cuptiActivityRegisterCallbacks");
    for (CUpti_ActivityKind kind : kKinds) {
      if (status.ok()) status = CuptiStatus(cuptiActivityEnable(kind), "cuptiActivityEnable");
    }
    if (!status.ok()) {
      for (CUpti_ActivityKind kind : kKinds) cuptiActivityDisable(kind);
      Release();
      finished_ = true;
    }
    return status;
  }
  void MarkStep() override { step_starts_.push_back(Now()); }
  absl::StatusOr<DeviceTraceSummary> Finish() override {
    if (finished_) return absl::FailedPreconditionError("the trace has finished");
    finished_ = true;
    const cudaError_t synced = cudaDeviceSynchronize();
    const uint64_t window_end = Now();
    for (CUpti_ActivityKind kind : kKinds) cuptiActivityDisable(kind);
    const absl::Status flushed = CuptiStatus(
        cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED), "cuptiActivityFlushAll");
    Release();
    if (synced != cudaSuccess) {
      return absl::InternalError(
          absl::StrCat("cudaDeviceSynchronize: ", cudaGetErrorString(synced)));
    }
    if (!flushed.ok()) return flushed;
    return SummarizeDeviceActivity(std::move(activity_), step_starts_, window_end);
  }

 private:
  void Release() {
    std::lock_guard<std::mutex> lock(recorded_mu);
    if (recorded == &activity_) recorded = nullptr;
  }
  bool finished_ = false;
  std::vector<DeviceInterval> activity_;
  std::vector<uint64_t> step_starts_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DeviceTrace>> DeviceTrace::Start() {
  auto trace = std::make_unique<CuptiTrace>();
  if (absl::Status status = trace->Begin(); !status.ok()) return status;
  return std::unique_ptr<DeviceTrace>(std::move(trace));
}

}  // namespace lserve::bench
