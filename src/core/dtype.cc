#include "arrowquant/dtype.h"

#include <array>
#include <bit>
#include <cassert>
#include <cctype>
#include <string>

namespace arrowquant {
namespace {

constexpr std::array<DTypeTraits, 15> kTable = {{
    {DType::kF64, "F64", "float64", 64, true, false},
    {DType::kF32, "F32", "float32", 32, true, true},
    {DType::kF16, "F16", "float16", 16, true, true},
    {DType::kBF16, "BF16", "bfloat16", 16, true, true},
    {DType::kI64, "I64", "int64", 64, false, false},
    {DType::kI32, "I32", "int32", 32, false, false},
    {DType::kI16, "I16", "int16", 16, false, false},
    {DType::kI8, "I8", "int8", 8, false, false},
    {DType::kU64, "U64", "uint64", 64, false, false},
    {DType::kU32, "U32", "uint32", 32, false, false},
    {DType::kU16, "U16", "uint16", 16, false, false},
    {DType::kU8, "U8", "uint8", 8, false, false},
    {DType::kBool, "BOOL", "bool", 8, false, false},
    {DType::kF8E4M3, "F8_E4M3", "float8_e4m3fn", 8, true, false},
    {DType::kF8E5M2, "F8_E5M2", "float8_e5m2", 8, true, false},
}};

consteval bool TableInEnumOrder() {
  for (size_t i = 0; i < kTable.size(); ++i) {
    if (static_cast<size_t>(kTable[i].dtype) != i) return false;
  }
  return true;
}
static_assert(TableInEnumOrder(), "kTable must be indexed by DType");

}  // namespace

std::span<const DTypeTraits> AllDTypes() {
  return kTable;
}

const DTypeTraits& Traits(DType dtype) {
  return kTable[static_cast<size_t>(dtype)];
}

std::optional<DType> DTypeFromSafeTensorsName(std::string_view name) {
  for (const auto& t : kTable) {
    if (t.safetensors_name == name) return t.dtype;
  }
  return std::nullopt;
}

std::optional<DType> DTypeFromName(std::string_view name) {
  std::string lower(name);
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "fp32" || lower == "f32") return DType::kF32;
  if (lower == "fp16" || lower == "f16" || lower == "half") return DType::kF16;
  if (lower == "bf16") return DType::kBF16;
  if (lower == "fp64" || lower == "f64" || lower == "double") return DType::kF64;
  for (const auto& t : kTable) {
    std::string st(t.safetensors_name);
    for (auto& c : st) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (st == lower || t.array_name == lower) return t.dtype;
  }
  return std::nullopt;
}

float F16BitsToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf, or NaN with its payload kept
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal: normalise the mantissa into an f32 normal.
    uint32_t e = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

uint16_t F32ToF16Bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t fexp = x & 0x7f800000u;
  const uint32_t fmant = x & 0x007fffffu;
  if (fexp >= 0x47800000u) {  // |f| >= 65536, inf or NaN
    if (fexp == 0x7f800000u && fmant != 0) {
      uint16_t nan = static_cast<uint16_t>(0x7c00u + (fmant >> 13));
      if (nan == 0x7c00u) ++nan;  // payload lived in the dropped bits: keep it a NaN
      return sign | nan;
    }
    return sign | 0x7c00u;
  }
  if (fexp <= 0x38000000u) {  // result is subnormal or zero
    if (fexp < 0x33000000u) return sign;
    const uint32_t e = fexp >> 23;
    uint32_t m = 0x00800000u + fmant;
    // The extra subnormal shift drops up to 11 low bits; they still count for rounding.
    const bool sticky_low = (fmant & 0x7ffu) != 0;
    m >>= (113 - e);
    if ((m & 0x3fffu) != 0x1000u || sticky_low) m += 0x1000u;
    return sign | static_cast<uint16_t>(m >> 13);
  }
  const uint16_t hexp = static_cast<uint16_t>((fexp - 0x38000000u) >> 13);
  uint32_t m = fmant;
  if ((m & 0x3fffu) != 0x1000u) m += 0x1000u;  // ties go to even
  // A carry out of the mantissa bumps the exponent, possibly to inf: still correct.
  return sign + static_cast<uint16_t>(hexp + static_cast<uint16_t>(m >> 13));
}

float BF16BitsToF32(uint16_t b) {
  return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

uint16_t F32ToBF16Bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) & 0x8000u) | 0x7fc0u;
  const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

void F16ToF32(std::span<const uint16_t> in, std::span<float> out) {
  assert(out.size() >= in.size());
  for (size_t i = 0; i < in.size(); ++i) out[i] = F16BitsToF32(in[i]);
}
void F32ToF16(std::span<const float> in, std::span<uint16_t> out) {
  assert(out.size() >= in.size());
  for (size_t i = 0; i < in.size(); ++i) out[i] = F32ToF16Bits(in[i]);
}
void BF16ToF32(std::span<const uint16_t> in, std::span<float> out) {
  assert(out.size() >= in.size());
  for (size_t i = 0; i < in.size(); ++i) out[i] = BF16BitsToF32(in[i]);
}
void F32ToBF16(std::span<const float> in, std::span<uint16_t> out) {
  assert(out.size() >= in.size());
  for (size_t i = 0; i < in.size(); ++i) out[i] = F32ToBF16Bits(in[i]);
}

}  // namespace arrowquant
