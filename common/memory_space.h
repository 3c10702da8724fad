// Where a buffer lives: host memory or a backend's device memory. The KV store allocates
// its pools through this seam, so it never includes backend code; a backend supplies its
// own MemorySpace for device memory.
#ifndef LSERVE_COMMON_MEMORY_SPACE_H_
#define LSERVE_COMMON_MEMORY_SPACE_H_

#include <cstddef>
#include <memory>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lserve {

class MemorySpace {
 public:
  virtual ~MemorySpace() = default;
  virtual std::string_view name() const = 0;
  // Whether the host may dereference pointers from Allocate.
  virtual bool host_accessible() const = 0;
  // `bytes` zero-filled bytes, 256-byte aligned; RESOURCE_EXHAUSTED when they do not fit.
  virtual absl::StatusOr<void*> Allocate(size_t bytes) = 0;
  virtual void Free(void* ptr) = 0;
  // Blocking copies between this space and host memory.
  virtual absl::Status CopyToHost(void* host_dst, const void* src, size_t bytes) = 0;
  virtual absl::Status CopyFromHost(void* dst, const void* host_src, size_t bytes) = 0;
  // Copy inside this space.
  virtual absl::Status Copy(void* dst, const void* src, size_t bytes) = 0;
};

// Plain host memory (process-wide instance).
MemorySpace* HostMemory();

// An owned allocation in a MemorySpace.
class Buffer {
 public:
  Buffer() = default;
  static absl::StatusOr<Buffer> Allocate(MemorySpace* space, size_t bytes);
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { Reset(); }

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  MemorySpace* space() const { return space_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  void Reset();

 private:
  MemorySpace* space_ = nullptr;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace lserve

#endif  // LSERVE_COMMON_MEMORY_SPACE_H_
