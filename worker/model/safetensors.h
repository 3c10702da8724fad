// Reading and writing safetensors checkpoints (https://github.com/huggingface/safetensors):
// an 8-byte little-endian header length, a JSON header, then raw little-endian tensor data.
#ifndef LSERVE_WORKER_MODEL_SAFETENSORS_H_
#define LSERVE_WORKER_MODEL_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/dtype.h"

namespace lserve {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // inside the file's bytes; may be unaligned
  size_t num_bytes = 0;
  std::string file;  // the file that holds the tensor, for error messages

  int64_t NumElements() const;
};

// Parses a whole safetensors file held in memory; `name` labels errors. The returned
// tensors point into `bytes`. As in the reference implementation, the tensors ordered by
// offset must tile the data section exactly: no overlaps, holes or trailing bytes.
absl::StatusOr<std::vector<TensorInfo>> ParseSafetensors(std::span<const uint8_t> bytes,
                                                         std::string_view name);

// One read-only memory-mapped safetensors file. Tensor data pointers stay valid for the
// lifetime of this object.
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const TensorInfo* Find(std::string_view name) const;  // nullptr when absent
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  absl::Status ParseHeader();

  std::filesystem::path path_;
  void* mapping_ = nullptr;
  size_t size_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
};

// A Hugging Face checkpoint folder: model.safetensors, or model.safetensors.index.json
// with its shards.
class CheckpointReader {
 public:
  static absl::StatusOr<std::unique_ptr<CheckpointReader>> Open(
      const std::filesystem::path& folder);

  // NotFound naming the tensor and the folder when absent.
  absl::StatusOr<const TensorInfo*> Get(std::string_view name) const;
  bool Has(std::string_view name) const;
  const std::filesystem::path& folder() const { return folder_; }

 private:
  CheckpointReader() = default;
  absl::Status OpenIndex(const std::filesystem::path& index_path);

  std::filesystem::path folder_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*, std::less<>> tensors_;
};

// Converts to float32; F16 and BF16 are widened exactly (subnormals, infinities, NaN).
// `out` must hold exactly tensor.NumElements() values.
absl::Status ConvertToFloat32(const TensorInfo& tensor, std::span<float> out);

float HalfToFloat(uint16_t bits);
float BFloat16ToFloat(uint16_t bits);
// Both round to nearest even; overflow gives infinity and NaN stays NaN.
uint16_t FloatToHalf(float value);
uint16_t FloatToBFloat16(float value);

struct TensorToWrite {
  std::string name;
  std::vector<int64_t> shape;
  std::span<const float> data;
};

// Writes tensors in the given order, converted to `dtype`, with __metadata__
// {"format": "pt"} and the header padded with spaces so tensor data starts 8-byte aligned.
absl::Status WriteSafetensors(const std::filesystem::path& path,
                              const std::vector<TensorToWrite>& tensors, DType dtype);

}  // namespace lserve

#endif  // LSERVE_WORKER_MODEL_SAFETENSORS_H_
