// Element types of tensors and KV pools, shared by checkpoints, kernels and the KV store.
#ifndef LSERVE_KERNELS_DTYPE_H_
#define LSERVE_KERNELS_DTYPE_H_

#include <cstddef>
#include <string_view>

namespace lserve {

enum class DType { kF32, kF16, kBF16 };

inline size_t DTypeSize(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

// The safetensors spelling: "F32", "F16", "BF16".
inline std::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
  }
  return "?";
}

}  // namespace lserve

#endif  // LSERVE_KERNELS_DTYPE_H_
