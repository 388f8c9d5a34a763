#include <gtest/gtest.h>
#include <rapidcheck.h>

#include <bit>
#include <cmath>
#include <cstring>

#include "arrowquant/dtype.h"

namespace arrowquant {
namespace {

bool IsNanF16(uint16_t h) {
  return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0;
}

TEST(DType, TableIsConsistent) {
  for (const auto& t : AllDTypes()) {
    EXPECT_EQ(&Traits(t.dtype), &t);
    EXPECT_EQ(DTypeFromSafeTensorsName(t.safetensors_name), t.dtype);
    EXPECT_EQ(t.bits % 8, 0);
  }
  EXPECT_FALSE(DTypeFromSafeTensorsName("F17").has_value());
  EXPECT_FALSE(DTypeFromSafeTensorsName("f32").has_value());  // names are case-sensitive
  int quantizable = 0;
  for (const auto& t : AllDTypes()) quantizable += t.quantizable;
  EXPECT_EQ(quantizable, 3);
  EXPECT_TRUE(Traits(DType::kBF16).quantizable);
  EXPECT_FALSE(Traits(DType::kF8E4M3).quantizable);
  EXPECT_FALSE(Traits(DType::kF64).quantizable);
}

TEST(DType, F16RoundTripsAllPatterns) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = F16BitsToF32(static_cast<uint16_t>(h));
    ASSERT_EQ(F32ToF16Bits(f), h) << std::hex << h;  // NaN payloads included
  }
}

TEST(DType, BF16RoundTripsAllNonNanPatterns) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = BF16BitsToF32(static_cast<uint16_t>(b));
    if (std::isnan(f)) {
      EXPECT_EQ(F32ToBF16Bits(f), (b & 0x8000u) | 0x7fc0u);
    } else {
      ASSERT_EQ(F32ToBF16Bits(f), b) << std::hex << b;
    }
  }
}

TEST(DType, F16KnownValues) {
  EXPECT_EQ(F32ToF16Bits(1.0f), 0x3c00);
  EXPECT_EQ(F32ToF16Bits(65504.0f), 0x7bff);
  EXPECT_EQ(F32ToF16Bits(65520.0f), 0x7c00);  // halfway to the next binade rounds to inf
  EXPECT_EQ(F32ToF16Bits(-0.0f), 0x8000);
  EXPECT_EQ(F32ToF16Bits(5.960464477539063e-08f), 0x0001);    // smallest subnormal
  EXPECT_EQ(F32ToF16Bits(2.98023223876953125e-08f), 0x0000);  // half of it: tie to even (0)
  EXPECT_EQ(F32ToF16Bits(1.0f + 1.0f / 2048), 0x3c00);        // tie to even, down
  EXPECT_EQ(F32ToF16Bits(1.0f + 3.0f / 2048), 0x3c02);        // tie to even, up
  EXPECT_EQ(F32ToBF16Bits(1.0f + 1.0f / 256), 0x3f80);        // tie to even, down
  EXPECT_EQ(F32ToBF16Bits(1.0f + 3.0f / 256), 0x3f82);        // tie to even, up
}

// The nearest f16 to any finite f32, ties to even, found by checking the neighbours.
TEST(DType, F32ToF16IsNearestProperty) {
  const bool ok = rc::check("f32 -> f16 is the nearest representable value", [](uint32_t bits) {
    const float f = std::bit_cast<float>(bits);
    RC_PRE(std::isfinite(f));
    const uint16_t h = F32ToF16Bits(f);
    const double err = std::fabs(static_cast<double>(F16BitsToF32(h)) - f);
    if ((h & 0x7fffu) == 0x7c00u) {
      RC_ASSERT(std::fabs(f) >= 65520.0f);
      return;
    }
    for (int delta : {-1, 1}) {
      const uint16_t n = static_cast<uint16_t>(h + delta);
      if (IsNanF16(n) || ((n ^ h) & 0x8000u)) continue;
      const double nerr = std::fabs(static_cast<double>(F16BitsToF32(n)) - f);
      RC_ASSERT(err <= nerr);
      if (err == nerr) RC_ASSERT((h & 1u) == 0u);
    }
  });
  EXPECT_TRUE(ok);
}

TEST(DType, BulkMatchesScalar) {
  std::vector<uint16_t> h(65536);
  for (uint32_t i = 0; i < 65536; ++i) h[i] = static_cast<uint16_t>(i);
  std::vector<float> f(h.size());
  std::vector<uint16_t> back(h.size());
  F16ToF32(h, f);
  F32ToF16(f, back);
  EXPECT_EQ(back, h);
  BF16ToF32(h, f);
  F32ToBF16(f, back);
  for (size_t i = 0; i < h.size(); ++i) {
    if (!std::isnan(f[i])) ASSERT_EQ(back[i], h[i]);
  }
}

}  // namespace
}  // namespace arrowquant
