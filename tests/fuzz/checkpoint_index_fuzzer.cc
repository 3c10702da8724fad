// Feeds arbitrary text as model.safetensors.index.json to CheckpointReader, in a scratch
// folder holding two valid shards: "a" and "c" in the first, "b" in the second.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/model/safetensors.h"

namespace {

// Removed with its contents when the fuzzer exits normally.
class ShardFolder {
 public:
  ShardFolder()
      : path_(std::filesystem::temp_directory_path() /
              ("lserve_index_fuzz_" + std::to_string(::getpid()))) {
    std::filesystem::create_directories(path_);
    const std::vector<float> a = {1, 2, 3, 4};
    const std::vector<float> b = {-1, -2};
    if (!lserve::WriteSafetensors(path_ / "model-00001-of-00002.safetensors",
                                  {{"a", {2, 2}, a}, {"c", {2}, b}}, lserve::DType::kF32)
             .ok() ||
        !lserve::WriteSafetensors(path_ / "model-00002-of-00002.safetensors", {{"b", {2}, b}},
                                  lserve::DType::kBF16)
             .ok()) {
      std::abort();  // the harness itself is broken; no input could be judged
    }
  }
  ~ShardFolder() {
    std::error_code error;
    std::filesystem::remove_all(path_, error);
  }

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ShardFolder shards;
  const std::filesystem::path& folder = shards.path();
  {
    std::ofstream out(folder / "model.safetensors.index.json", std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  absl::StatusOr<std::unique_ptr<lserve::CheckpointReader>> reader =
      lserve::CheckpointReader::Open(folder);
  if (!reader.ok()) return 0;
  for (const char* name : {"a", "b", "c", "missing"}) {
    absl::StatusOr<const lserve::TensorInfo*> tensor = (*reader)->Get(name);
    if (tensor.ok() != (*reader)->Has(name)) __builtin_trap();
    if (!tensor.ok()) continue;
    std::vector<float> out(static_cast<size_t>((*tensor)->NumElements()));
    if (!lserve::ConvertToFloat32(**tensor, out).ok()) __builtin_trap();
  }
  return 0;
}
