// An owned cudaMalloc allocation with blocking host copies, for tests and benchmarks.
// No CUDA types here, so plain C++ code can use it.
#ifndef LSERVE_KERNELS_CUDA_DEVICE_BUFFER_H_
#define LSERVE_KERNELS_CUDA_DEVICE_BUFFER_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lserve::cuda {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // An empty request allocates nothing and yields a null data().
  static absl::StatusOr<DeviceBuffer> Allocate(size_t bytes);

  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer();

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

  // Copies run on the legacy default stream, so they wait for kernels launched there
  // and surface their asynchronous errors. OutOfRange when `bytes` exceeds the buffer.
  absl::Status CopyFromHost(const void* src, size_t bytes);
  absl::Status CopyToHost(void* dst, size_t bytes) const;
  // Sets every byte; 0xFF makes every bf16 and float element a NaN, which tests use to
  // see which outputs a kernel wrote.
  absl::Status Fill(uint8_t byte);

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

template <typename T>
absl::StatusOr<DeviceBuffer> Upload(const std::vector<T>& host) {
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Allocate(host.size() * sizeof(T));
  if (!buffer.ok()) return buffer.status();
  if (absl::Status s = buffer->CopyFromHost(host.data(), host.size() * sizeof(T)); !s.ok()) {
    return s;
  }
  return buffer;
}

template <typename T>
absl::StatusOr<std::vector<T>> Download(const DeviceBuffer& buffer, size_t count) {
  std::vector<T> host(count);
  if (absl::Status s = buffer.CopyToHost(host.data(), count * sizeof(T)); !s.ok()) return s;
  return host;
}

}  // namespace lserve::cuda

#endif  // LSERVE_KERNELS_CUDA_DEVICE_BUFFER_H_
