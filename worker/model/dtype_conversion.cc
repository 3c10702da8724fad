// Float16 / bfloat16 <-> float32 conversions declared in safetensors.h. Integer bit
// manipulation keeps results identical on every machine and independent of FTZ/DAZ modes.
#include <bit>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "worker/model/safetensors.h"

namespace lserve {

float HalfToFloat(uint16_t bits) {
  const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  const uint32_t exponent = (bits >> 10) & 0x1fu;
  uint32_t mantissa = bits & 0x3ffu;
  if (exponent == 0x1f) {
    // Infinity, or NaN with its payload kept.
    return std::bit_cast<float>(sign | 0x7f800000u | (mantissa << 13));
  }
  if (exponent != 0) {
    return std::bit_cast<float>(sign | ((exponent + 112) << 23) | (mantissa << 13));
  }
  if (mantissa == 0) return std::bit_cast<float>(sign);
  // Subnormal half: renormalise; every half subnormal is a normal float.
  int shift = 0;
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    ++shift;
  }
  const uint32_t float_exponent = static_cast<uint32_t>(113 - shift);
  return std::bit_cast<float>(sign | (float_exponent << 23) | ((mantissa & 0x3ffu) << 13));
}

float BFloat16ToFloat(uint16_t bits) {
  return std::bit_cast<float>(static_cast<uint32_t>(bits) << 16);
}

uint16_t FloatToHalf(float value) {
  const uint32_t bits = std::bit_cast<uint32_t>(value);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) {
    // NaN: keep the top payload bits and force quiet so it never becomes infinity.
    return static_cast<uint16_t>(sign | 0x7e00u | ((magnitude >> 13) & 0x3ffu));
  }
  // 65520 is halfway between the largest half (65504) and 65536; ties go to even (infinity).
  if (magnitude >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (magnitude >= 0x38800000u) {
    // Normal half: rebias the exponent (127 -> 15) and round the dropped 13 bits to even;
    // a mantissa carry correctly bumps the exponent.
    const uint32_t rounded = magnitude + 0xfffu + ((magnitude >> 13) & 1u);
    return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
  }
  if (magnitude < 0x33000000u) return sign;  // below half the smallest subnormal (2^-25)
  // Subnormal half: the value in units of 2^-24, rounded to nearest even.
  const uint32_t exponent = magnitude >> 23;
  const uint32_t mantissa = (magnitude & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - exponent;  // 14..24 for this range
  const uint32_t kept = mantissa >> shift;
  const uint32_t dropped = mantissa & ((1u << shift) - 1);
  const uint32_t halfway = 1u << (shift - 1);
  const uint32_t result =
      kept + ((dropped > halfway || (dropped == halfway && (kept & 1u))) ? 1 : 0);
  return static_cast<uint16_t>(sign | result);
}

uint16_t FloatToBFloat16(float value) {
  uint32_t bits = std::bit_cast<uint32_t>(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // quiet NaN, never infinity
  }
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

absl::Status ConvertToFloat32(const TensorInfo& tensor, std::span<float> out) {
  const int64_t elements = tensor.NumElements();
  if (elements < 0 || static_cast<uint64_t>(elements) != out.size()) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "' in ", tensor.file,
                                                   " has ", elements,
                                                   " elements but the output holds ", out.size()));
  }
  if (tensor.num_bytes != out.size() * DTypeSize(tensor.dtype) ||
      (tensor.data == nullptr && !out.empty())) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "' in ", tensor.file,
                                                   " has ", tensor.num_bytes,
                                                   " bytes of data, inconsistent with its shape"));
  }
  if (out.empty()) return absl::OkStatus();
  if (tensor.dtype == DType::kF32) {
    std::memcpy(out.data(), tensor.data, tensor.num_bytes);
    return absl::OkStatus();
  }
  const bool is_half = tensor.dtype == DType::kF16;
  for (size_t i = 0; i < out.size(); ++i) {
    uint16_t bits;
    std::memcpy(&bits, tensor.data + 2 * i, sizeof(bits));  // data may be unaligned
    out[i] = is_half ? HalfToFloat(bits) : BFloat16ToFloat(bits);
  }
  return absl::OkStatus();
}

}  // namespace lserve
