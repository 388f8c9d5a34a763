// The one dtype traits table, and f16/bf16 <-> f32 conversion.
//
// Conversions are bit-exact with NumPy (f16) and ml_dtypes (bf16), tested over all 65,536
// 16-bit patterns:
//   f16 -> f32, bf16 -> f32: exact, NaN payloads preserved (no quieting).
//   f32 -> f16: round to nearest, ties to even; overflow -> signed inf; NaN keeps the top 10
//               payload bits (forced non-zero so it stays NaN), as NumPy does.
//   f32 -> bf16: round to nearest, ties to even; NaN -> signed quiet NaN 0x7fc0, as ml_dtypes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

namespace arrowquant {

enum class DType : uint8_t {
  kF64,
  kF32,
  kF16,
  kBF16,
  kI64,
  kI32,
  kI16,
  kI8,
  kU64,
  kU32,
  kU16,
  kU8,
  kBool,
  kF8E4M3,
  kF8E5M2,
};

struct DTypeTraits {
  DType dtype;
  std::string_view safetensors_name;  // as spelled in a SafeTensors header
  // numpy / torch / ml_dtypes spelling ("float32", "bfloat16", "float8_e4m3fn": F8_E4M3 is the
  // finite-only variant with NaN = S.1111.111, as in SafeTensors and torch).
  std::string_view array_name;
  uint8_t bits;  // storage bits per element
  bool floating;
  // Only F32/F16/BF16 weights are quantized; every other dtype is carried through unchanged
  // and reported, never coerced.
  bool quantizable;
};

// The table itself, in DType order.
std::span<const DTypeTraits> AllDTypes();
const DTypeTraits& Traits(DType dtype);
std::optional<DType> DTypeFromSafeTensorsName(std::string_view name);
// Either spelling of the table, case-insensitive, plus "fp32"/"fp16"/"bf16"-style aliases (the
// seed schema's dtype column).
std::optional<DType> DTypeFromName(std::string_view name);
inline size_t ElementBytes(DType dtype) {
  return Traits(dtype).bits / 8;
}

float F16BitsToF32(uint16_t h);
uint16_t F32ToF16Bits(float f);
float BF16BitsToF32(uint16_t b);
uint16_t F32ToBF16Bits(float f);

// Bulk conversions; `out` must be at least as long as `in`.
void F16ToF32(std::span<const uint16_t> in, std::span<float> out);
void F32ToF16(std::span<const float> in, std::span<uint16_t> out);
void BF16ToF32(std::span<const uint16_t> in, std::span<float> out);
void F32ToBF16(std::span<const float> in, std::span<uint16_t> out);

}  // namespace arrowquant
