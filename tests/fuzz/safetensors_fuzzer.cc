// Feeds arbitrary bytes to the safetensors parser. Whatever it accepts must tile the data
// section and convert without reading outside the input, which ASan checks.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<std::vector<lserve::TensorInfo>> tensors =
      lserve::ParseSafetensors(std::span<const uint8_t>(data, size), "fuzz.safetensors");
  if (!tensors.ok()) return 0;
  uint64_t header_size = 0;
  std::memcpy(&header_size, data, sizeof(header_size));
  uint64_t covered = 0;
  for (const lserve::TensorInfo& tensor : *tensors) {
    covered += tensor.num_bytes;
    std::vector<float> out(static_cast<size_t>(tensor.NumElements()));
    if (!lserve::ConvertToFloat32(tensor, out).ok()) __builtin_trap();
  }
  // The reference accepts only files whose tensors cover the data section exactly.
  if (covered != size - 8 - header_size) __builtin_trap();
  return 0;
}
