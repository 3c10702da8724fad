#include "worker/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace lserve {
namespace {

using Json = nlohmann::json;

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian and is read in place");

// Element counts above this cannot be backed by any file and would overflow byte sizes.
constexpr int64_t kMaxElements = int64_t{1} << 60;
// The reference implementation's limit; real headers are a few megabytes, and a corrupt
// length must not make the JSON parser chew through a multi-gigabyte data section.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

absl::Status FileError(const std::string& file, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", what));
}

absl::Status TooShortError(const std::string& file, size_t size) {
  return FileError(file,
                   absl::StrCat("is ", size, " bytes, shorter than the 8-byte header length"));
}

absl::Status OpenError(const std::filesystem::path& path, int error) {
  const std::string message =
      absl::StrCat("cannot open ", path.string(), ": ", std::strerror(error));
  if (error == ENOENT || error == ENOTDIR) return absl::NotFoundError(message);
  if (error == EACCES || error == EPERM) return absl::PermissionDeniedError(message);
  return absl::UnavailableError(message);
}

bool ParseDType(absl::string_view name, DType& dtype) {
  if (name == "F32") {
    dtype = DType::kF32;
  } else if (name == "F16") {
    dtype = DType::kF16;
  } else if (name == "BF16") {
    dtype = DType::kBF16;
  } else {
    return false;
  }
  return true;
}

// Parses one header entry; offsets are relative to the data section of `data_size` bytes.
absl::Status ParseTensorEntry(const std::string& file, const std::string& name, const Json& entry,
                              const uint8_t* data, uint64_t data_size, TensorInfo& info) {
  const std::string where = absl::StrCat("tensor '", name, "'");
  if (!entry.is_object()) return FileError(file, absl::StrCat(where, " is not a JSON object"));
  info.name = name;
  info.file = file;
  auto dtype = entry.find("dtype");
  if (dtype == entry.end() || !dtype->is_string()) {
    return FileError(file, absl::StrCat(where, " has no string 'dtype'"));
  }
  if (!ParseDType(dtype->get_ref<const std::string&>(), info.dtype)) {
    return FileError(
        file, absl::StrCat(where, " has unsupported dtype '", dtype->get_ref<const std::string&>(),
                           "' (supported: F32, F16, BF16)"));
  }
  auto shape = entry.find("shape");
  if (shape == entry.end() || !shape->is_array()) {
    return FileError(file, absl::StrCat(where, " has no 'shape' list"));
  }
  int64_t elements = 1;
  for (const Json& dim : *shape) {
    if (!dim.is_number_integer()) {
      return FileError(file, absl::StrCat(where, " has a non-integer shape entry"));
    }
    if (dim.is_number_unsigned() ? dim.get<uint64_t>() > uint64_t{kMaxElements}
                                 : dim.get<int64_t>() < 0) {
      return FileError(file, absl::StrCat(where, " has a negative or huge dimension ", dim.dump()));
    }
    const int64_t size = dim.get<int64_t>();
    if (size != 0 && elements > kMaxElements / size) {
      return FileError(file, absl::StrCat(where, " has too many elements"));
    }
    elements *= size;
    info.shape.push_back(size);
  }
  auto offsets = entry.find("data_offsets");
  if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2 ||
      !(*offsets)[0].is_number_unsigned() || !(*offsets)[1].is_number_unsigned()) {
    return FileError(file,
                     absl::StrCat(where, " needs 'data_offsets' as two non-negative integers"));
  }
  const uint64_t begin = (*offsets)[0].get<uint64_t>();
  const uint64_t end = (*offsets)[1].get<uint64_t>();
  if (begin > end || end > data_size) {
    return FileError(file, absl::StrCat(where, " has data_offsets [", begin, ", ", end,
                                        "] outside the data section of ", data_size, " bytes"));
  }
  const uint64_t expected = static_cast<uint64_t>(elements) * DTypeSize(info.dtype);
  if (end - begin != expected) {
    return FileError(file, absl::StrCat(where, " spans ", end - begin, " bytes but shape [",
                                        absl::StrJoin(info.shape, ", "), "] of ",
                                        std::string(DTypeName(info.dtype)), " needs ", expected));
  }
  info.data = data + begin;
  info.num_bytes = static_cast<size_t>(expected);
  return absl::OkStatus();
}

std::string Describe(const TensorInfo& info, const uint8_t* data) {
  const uint64_t begin = static_cast<uint64_t>(info.data - data);
  return absl::StrCat("'", info.name, "' [", begin, ", ", begin + info.num_bytes, "]");
}

// Overlapping tensors would alias each other's weights, and bytes outside every tensor
// mean the header and the data disagree; the reference implementation rejects both.
absl::Status CheckTiling(const std::string& file, const std::vector<TensorInfo>& tensors,
                         const uint8_t* data, uint64_t data_size) {
  std::vector<const TensorInfo*> order;
  order.reserve(tensors.size());
  for (const TensorInfo& info : tensors) order.push_back(&info);
  // Zero-size tensors sort before a tensor that starts at the same offset, as in the
  // reference, so they sit legally at any boundary.
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return std::tie(a->data, a->num_bytes, a->name) < std::tie(b->data, b->num_bytes, b->name);
  });
  const TensorInfo* previous = nullptr;
  uint64_t covered = 0;
  for (const TensorInfo* info : order) {
    const uint64_t begin = static_cast<uint64_t>(info->data - data);
    if (begin < covered) {
      return FileError(file, absl::StrCat("tensors ", Describe(*previous, data), " and ",
                                          Describe(*info, data), " overlap"));
    }
    if (begin > covered) {
      return FileError(
          file, previous == nullptr
                    ? absl::StrCat("data bytes [0, ", begin, ") before tensor ",
                                   Describe(*info, data), " belong to no tensor")
                    : absl::StrCat("data bytes [", covered, ", ", begin, ") between tensors ",
                                   Describe(*previous, data), " and ", Describe(*info, data),
                                   " belong to no tensor"));
    }
    covered = begin + info->num_bytes;
    previous = info;
  }
  if (covered == data_size) return absl::OkStatus();
  if (previous == nullptr) {
    return FileError(file, absl::StrCat("the header lists no tensors but the data section holds ",
                                        data_size, " bytes"));
  }
  return FileError(file, absl::StrCat(data_size - covered, " trailing data bytes after tensor ",
                                      Describe(*previous, data), " belong to no tensor"));
}

absl::StatusOr<std::string> ReadTextFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path.string()));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path.string()));
  return text.str();
}

// Shard names come from file data; only plain file names inside the folder are accepted.
bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find_first_of("/\\") == std::string::npos && name.find('\0') == std::string::npos;
}

}  // namespace

int64_t TensorInfo::NumElements() const {
  int64_t elements = 1;
  for (int64_t dim : shape) elements *= dim;
  return elements;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) munmap(mapping_, size_);
}

absl::StatusOr<std::vector<TensorInfo>> ParseSafetensors(std::span<const uint8_t> bytes,
                                                         std::string_view name) {
  const std::string file(name);
  if (bytes.size() < 8) return TooShortError(file, bytes.size());
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), sizeof(header_size));
  if (header_size > bytes.size() - 8) {
    return FileError(file,
                     absl::StrCat("header length ", header_size, " runs past the end of the file (",
                                  bytes.size(), " bytes)"));
  }
  if (header_size > kMaxHeaderBytes) {
    return FileError(file, absl::StrCat("header length ", header_size, " exceeds the limit of ",
                                        kMaxHeaderBytes, " bytes"));
  }
  const char* header_begin = reinterpret_cast<const char*>(bytes.data() + 8);
  Json header;
  try {
    header = Json::parse(header_begin, header_begin + header_size);
  } catch (const Json::exception& e) {
    return FileError(file, absl::StrCat("header is not valid JSON (", e.what(), ")"));
  }
  if (!header.is_object()) return FileError(file, "header is not a JSON object");
  const uint8_t* data = bytes.data() + 8 + header_size;
  const uint64_t data_size = bytes.size() - 8 - header_size;
  std::vector<TensorInfo> tensors;
  tensors.reserve(header.size());
  for (const auto& [tensor_name, entry] : header.items()) {
    if (tensor_name == "__metadata__") continue;
    TensorInfo info;
    RETURN_IF_ERROR(ParseTensorEntry(file, tensor_name, entry, data, data_size, info));
    tensors.push_back(std::move(info));
  }
  RETURN_IF_ERROR(CheckTiling(file, tensors, data, data_size));
  return tensors;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::filesystem::path& path) {
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return OpenError(path, errno);
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return FileError(path.string(), "is not a regular file");
  }
  file->size_ = static_cast<size_t>(st.st_size);
  // mmap refuses empty files, so short ones are turned away before mapping.
  if (file->size_ < 8) {
    ::close(fd);
    return TooShortError(path.string(), file->size_);
  }
  void* mapping = mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_error = errno;
  ::close(fd);
  if (mapping == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot map ", path.string(), ": ", std::strerror(map_error)));
  }
  file->mapping_ = mapping;
  // Weights are read in full right after opening; start the reads now instead of on first
  // touch. Only a hint, so failure is harmless.
  madvise(mapping, file->size_, MADV_WILLNEED);
  RETURN_IF_ERROR(file->ParseHeader());
  return file;
}

absl::Status SafetensorsFile::ParseHeader() {
  ASSIGN_OR_RETURN(
      tensors_, ParseSafetensors({static_cast<const uint8_t*>(mapping_), size_}, path_.string()));
  for (size_t i = 0; i < tensors_.size(); ++i) index_.emplace(tensors_[i].name, i);
  return absl::OkStatus();
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<std::unique_ptr<CheckpointReader>> CheckpointReader::Open(
    const std::filesystem::path& folder) {
  std::error_code error;
  if (!std::filesystem::is_directory(folder, error)) {
    return absl::NotFoundError(
        absl::StrCat("checkpoint folder ", folder.string(), " does not exist"));
  }
  std::unique_ptr<CheckpointReader> reader(new CheckpointReader());
  reader->folder_ = folder;
  const std::filesystem::path index_path = folder / "model.safetensors.index.json";
  if (std::filesystem::exists(index_path, error)) {
    RETURN_IF_ERROR(reader->OpenIndex(index_path));
    return reader;
  }
  const std::filesystem::path single_path = folder / "model.safetensors";
  if (!std::filesystem::exists(single_path, error)) {
    return absl::NotFoundError(absl::StrCat("checkpoint folder ", folder.string(),
                                            " has neither model.safetensors nor "
                                            "model.safetensors.index.json"));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(single_path));
  for (const TensorInfo& info : file->tensors()) reader->tensors_.emplace(info.name, &info);
  reader->files_.push_back(std::move(file));
  return reader;
}

absl::Status CheckpointReader::OpenIndex(const std::filesystem::path& index_path) {
  const std::string index_name = index_path.string();
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(index_path));
  Json index;
  try {
    index = Json::parse(text);
  } catch (const Json::exception& e) {
    return FileError(index_name, absl::StrCat("not valid JSON (", e.what(), ")"));
  }
  if (!index.is_object()) return FileError(index_name, "the top level is not a JSON object");
  auto weight_map = index.find("weight_map");
  if (weight_map == index.end() || !weight_map->is_object()) {
    return FileError(index_name, "'weight_map' is missing or not an object");
  }
  std::map<std::string, const SafetensorsFile*> shards;
  for (const auto& [tensor, shard] : weight_map->items()) {
    if (!shard.is_string() || !IsPlainFileName(shard.get_ref<const std::string&>())) {
      return FileError(index_name, absl::StrCat("'weight_map' entry '", tensor,
                                                "' must name a shard file in the folder"));
    }
    shards.emplace(shard.get<std::string>(), nullptr);
  }
  for (auto& [shard_name, shard] : shards) {
    const std::filesystem::path shard_path = folder_ / shard_name;
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(shard_path);
    if (absl::IsNotFound(file.status())) {
      return absl::NotFoundError(absl::StrCat(index_name, ": shard ", shard_name, " is missing (",
                                              file.status().message(), ")"));
    }
    if (!file.ok()) return file.status();
    shard = file->get();
    files_.push_back(std::move(file).value());
  }
  for (const auto& [tensor, shard_name] : weight_map->items()) {
    const TensorInfo* info = shards.at(shard_name.get<std::string>())->Find(tensor);
    if (info == nullptr) {
      return FileError(index_name,
                       absl::StrCat("'weight_map' puts tensor '", tensor, "' in ",
                                    shard_name.get<std::string>(), ", which does not contain it"));
    }
    tensors_.emplace(tensor, info);
  }
  return absl::OkStatus();
}

absl::StatusOr<const TensorInfo*> CheckpointReader::Get(std::string_view name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tensor '", std::string(name), "' is not in checkpoint ", folder_.string()));
  }
  return it->second;
}

bool CheckpointReader::Has(std::string_view name) const { return tensors_.contains(name); }

}  // namespace lserve
