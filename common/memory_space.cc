#include "common/memory_space.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"

namespace lserve {
namespace {

class HostMemorySpace final : public MemorySpace {
 public:
  std::string_view name() const override { return "host"; }
  bool host_accessible() const override { return true; }
  absl::StatusOr<void*> Allocate(size_t bytes) override {
    if (bytes == 0) return nullptr;
    const size_t rounded = (bytes + 255) / 256 * 256;
    void* ptr = std::aligned_alloc(256, rounded);
    if (ptr == nullptr) {
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes, " host bytes"));
    }
    std::memset(ptr, 0, rounded);
    return ptr;
  }
  void Free(void* ptr) override { std::free(ptr); }
  absl::Status CopyToHost(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::Status CopyFromHost(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, src, bytes);
    return absl::OkStatus();
  }
  absl::Status Copy(void* dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memmove(dst, src, bytes);
    return absl::OkStatus();
  }
};

}  // namespace

MemorySpace* HostMemory() {
  static HostMemorySpace* space = new HostMemorySpace();
  return space;
}

absl::StatusOr<Buffer> Buffer::Allocate(MemorySpace* space, size_t bytes) {
  absl::StatusOr<void*> data = space->Allocate(bytes);
  if (!data.ok()) return data.status();
  Buffer buffer;
  buffer.space_ = space;
  buffer.data_ = *data;
  buffer.bytes_ = bytes;
  return buffer;
}

Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    Reset();
    space_ = other.space_;
    data_ = other.data_;
    bytes_ = other.bytes_;
    other.space_ = nullptr;
    other.data_ = nullptr;
    other.bytes_ = 0;
  }
  return *this;
}

void Buffer::Reset() {
  if (data_ != nullptr) space_->Free(data_);
  space_ = nullptr;
  data_ = nullptr;
  bytes_ = 0;
}

}  // namespace lserve
