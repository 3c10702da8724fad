#include "kernels/cuda/device_buffer.h"

#include <cuda_runtime_api.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_status.h"

namespace lserve::cuda {
namespace {

absl::Status CheckSize(size_t requested, size_t available) {
  if (requested <= available) return absl::OkStatus();
  return absl::OutOfRangeError(
      absl::StrCat("copy of ", requested, " bytes exceeds a device buffer of ", available));
}

}  // namespace

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(size_t bytes) {
  DeviceBuffer buffer;
  if (bytes == 0) return buffer;
  void* data = nullptr;
  RETURN_IF_ERROR(
      internal::CudaStatus(cudaMalloc(&data, bytes), absl::StrCat("cudaMalloc(", bytes, ")")));
  buffer.data_ = data;
  buffer.bytes_ = bytes;
  return buffer;
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) cudaFree(data_);
}

absl::Status DeviceBuffer::CopyFromHost(const void* src, size_t bytes) {
  RETURN_IF_ERROR(CheckSize(bytes, bytes_));
  if (bytes == 0) return absl::OkStatus();
  return internal::CudaStatus(cudaMemcpy(data_, src, bytes, cudaMemcpyHostToDevice),
                              "cudaMemcpy host to device");
}

absl::Status DeviceBuffer::CopyToHost(void* dst, size_t bytes) const {
  RETURN_IF_ERROR(CheckSize(bytes, bytes_));
  if (bytes == 0) return absl::OkStatus();
  return internal::CudaStatus(cudaMemcpy(dst, data_, bytes, cudaMemcpyDeviceToHost),
                              "cudaMemcpy device to host");
}

absl::Status DeviceBuffer::Fill(uint8_t byte) {
  if (bytes_ == 0) return absl::OkStatus();
  return internal::CudaStatus(cudaMemset(data_, byte, bytes_), "cudaMemset");
}

}  // namespace lserve::cuda
