// ggml's block layouts (ggml-common.h), one struct each, sizes asserted against ggml's table.
// Bit order, per block of QK values (element e = 0 .. QK - 1):
//   Q4_0, Q5_0: qs[j] holds element j (low nibble) and j + 16 (high nibble); Q5_0's fifth bit of
//     element e is bit e of qh (little-endian u32).
//   Q8_0: qs[e] = signed code.
//   Q2_K, Q3_K low bits: element e = 128 h + 32 s + l is at qs[32 h + l] >> 2 s (2 bits).
//   Q3_K high bit: element e = 32 s + l is bit s of hmask[l]; a set bit means +4 (code - 4).
//   Q4_K, Q5_K: element e = 64 i + 32 h + l is nibble h of qs[32 i + l]; Q5_K's fifth bit of
//     element e = 32 j + l is bit j of qh[l].
//   Q6_K: low nibble of element e = 128 H + 64 h + l (l < 64) is nibble h of ql[64 H + l]; its two
//     high bits, with e = 128 H + 32 s + l (l < 32), are qh[32 H + l] >> 2 s.
//   Sub-block scales: Q2_K byte j = scale | min << 4; Q3_K 6-bit scale j (stored + 32): low four
//     bits in scales[j % 8] nibble j / 8, high two in scales[8 + j % 4] at bit 2 (j / 4);
//     Q4_K/Q5_K 6-bit scale and min j: for j < 4, scales[j] and scales[j + 4] low six bits;
//     for j >= 4, low four bits in scales[j + 4] (scale low nibble, min high nibble) and high
//     two in bits 6-7 of scales[j - 4] (scale) and scales[j] (min). Q6_K: int8 per 16 values.
#pragma once

#include <cstdint>

namespace arrowquant::gguf {

constexpr int kQK = 256;  // K-quant super-block

struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[16];
};
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[16];
};
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[32];
};
struct BlockQ2_K {
  uint8_t scales[16];
  uint8_t qs[64];
  uint16_t d, dmin;
};
struct BlockQ3_K {
  uint8_t hmask[32];
  uint8_t qs[64];
  uint8_t scales[12];
  uint16_t d;
};
struct BlockQ4_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qs[128];
};
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[32];
  uint8_t qs[128];
};
struct BlockQ6_K {
  uint8_t ql[128];
  uint8_t qh[64];
  int8_t scales[16];
  uint16_t d;
};
static_assert(sizeof(BlockQ4_0) == 18);
static_assert(sizeof(BlockQ5_0) == 22);
static_assert(sizeof(BlockQ8_0) == 34);
static_assert(sizeof(BlockQ2_K) == 84);
static_assert(sizeof(BlockQ3_K) == 110);
static_assert(sizeof(BlockQ4_K) == 144);
static_assert(sizeof(BlockQ5_K) == 176);
static_assert(sizeof(BlockQ6_K) == 210);

}  // namespace arrowquant::gguf
