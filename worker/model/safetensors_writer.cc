// WriteSafetensors, declared in safetensors.h.
#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "worker/model/safetensors.h"

namespace lserve {
namespace {

// Elements converted per write call; bounds the staging buffer for multi-GB tensors.
constexpr size_t kChunkElements = size_t{1} << 20;

absl::Status ValidateTensors(const std::vector<TensorToWrite>& tensors) {
  std::set<std::string_view> names;
  for (const TensorToWrite& tensor : tensors) {
    if (tensor.name.empty() || tensor.name == "__metadata__") {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid tensor name '", tensor.name, "' for safetensors"));
    }
    if (!names.insert(tensor.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "' is listed twice"));
    }
    uint64_t elements = 1;
    for (int64_t dim : tensor.shape) {
      if (dim < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", tensor.name, "' has a negative dimension ", dim));
      }
      elements *= static_cast<uint64_t>(dim);
    }
    if (elements != tensor.data.size()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "' has ",
                                                     tensor.data.size(),
                                                     " values but its shape needs ", elements));
    }
  }
  return absl::OkStatus();
}

std::string BuildHeader(const std::vector<TensorToWrite>& tensors, DType dtype) {
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const TensorToWrite& tensor : tensors) {
    const uint64_t bytes = tensor.data.size() * DTypeSize(dtype);
    header[tensor.name] = {{"dtype", DTypeName(dtype)},
                           {"shape", tensor.shape},
                           {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
  // Pads so the data section starts 8-byte aligned; spaces keep the header valid JSON.
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

bool WriteTensorData(std::FILE* out, std::span<const float> data, DType dtype,
                     std::vector<uint16_t>& staging) {
  if (dtype == DType::kF32) {
    return std::fwrite(data.data(), sizeof(float), data.size(), out) == data.size();
  }
  for (size_t begin = 0; begin < data.size(); begin += kChunkElements) {
    const size_t count = std::min(kChunkElements, data.size() - begin);
    staging.resize(count);
    for (size_t i = 0; i < count; ++i) {
      const float value = data[begin + i];
      staging[i] = dtype == DType::kF16 ? FloatToHalf(value) : FloatToBFloat16(value);
    }
    if (std::fwrite(staging.data(), sizeof(uint16_t), count, out) != count) return false;
  }
  return true;
}

}  // namespace

absl::Status WriteSafetensors(const std::filesystem::path& path,
                              const std::vector<TensorToWrite>& tensors, DType dtype) {
  if (absl::Status status = ValidateTensors(tensors); !status.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": ", status.message()));
  }
  const std::string header = BuildHeader(tensors, dtype);
  // Written beside the target and renamed, so readers never see a half-written file.
  const std::filesystem::path temp_path = path.string() + ".partial";
  std::FILE* out = std::fopen(temp_path.c_str(), "wb");
  if (out == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot create ", temp_path.string(), ": ", std::strerror(errno)));
  }
  const uint64_t header_size = header.size();
  bool ok = std::fwrite(&header_size, sizeof(header_size), 1, out) == 1 &&
            std::fwrite(header.data(), 1, header.size(), out) == header.size();
  std::vector<uint16_t> staging;
  for (size_t i = 0; ok && i < tensors.size(); ++i) {
    ok = WriteTensorData(out, tensors[i].data, dtype, staging);
  }
  const int write_error = errno;
  ok = (std::fclose(out) == 0) && ok;
  std::error_code error;
  if (!ok) {
    std::filesystem::remove(temp_path, error);
    return absl::UnavailableError(
        absl::StrCat("cannot write ", path.string(), ": ", std::strerror(write_error)));
  }
  std::filesystem::rename(temp_path, path, error);
  if (error) {
    std::filesystem::remove(temp_path, error);
    return absl::UnavailableError(
        absl::StrCat("cannot move ", temp_path.string(), " to ", path.string()));
  }
  return absl::OkStatus();
}

}  // namespace lserve
