// Bit packing of unsigned codes.
//
// Bit order (fixed by golden-byte tests): within a row, element k occupies bits
// [k*b, (k+1)*b) of the row's little-endian bit stream, i.e. it starts at bit (k*b) % 8 of byte
// (k*b) / 8, least significant bit first. So INT4 puts element 2k in the low nibble of byte k and
// element 2k+1 in the high nibble; INT2 puts element 4k in bits 0-1 of byte k; INT8 is one code
// per byte; INT3 codes straddle bytes (8 codes in 3 bytes: element 2 is bits 6-7 of byte 0 and
// bit 0 of byte 1), as do 6-bit scale codes (4 codes in 3 bytes). Each row starts on a byte
// boundary; unused high bits of a row's last byte are zero.
#pragma once

#include <cstddef>
#include <cstdint>

namespace arrowquant::kernels {

constexpr size_t PackedBytes(size_t n, int bits) {
  return (n * static_cast<size_t>(bits) + 7) / 8;
}

constexpr uint8_t PackInt4Pair(uint8_t even, uint8_t odd) {
  return static_cast<uint8_t>((even & 0x0f) | ((odd & 0x0f) << 4));
}
constexpr uint8_t PackInt2Quad(uint8_t e0, uint8_t e1, uint8_t e2, uint8_t e3) {
  return static_cast<uint8_t>((e0 & 3) | ((e1 & 3) << 2) | ((e2 & 3) << 4) | ((e3 & 3) << 6));
}

static_assert(PackedBytes(2, 4) == 1 && PackedBytes(3, 4) == 2, "INT4: two codes per byte");
static_assert(PackedBytes(4, 2) == 1 && PackedBytes(5, 2) == 2, "INT2: four codes per byte");
static_assert(PackedBytes(1, 8) == 1, "INT8: one code per byte");
static_assert(PackedBytes(4, 6) == 3, "6-bit codes: four in three bytes");
static_assert(PackedBytes(8, 3) == 3 && PackedBytes(9, 3) == 4, "INT3: eight codes in 3 bytes");
static_assert(PackInt4Pair(0x1, 0x2) == 0x21, "INT4: element 2k is the low nibble");
static_assert(PackInt2Quad(1, 2, 3, 0) == 0b00111001, "INT2: element 4k is bits 0-1");

// Packs n codes (each < 2^bits) into PackedBytes(n, bits) bytes at `out`; bits in 2..8.
// ref:: is the scalar spec; the other dispatches to SIMD for INT2/INT4 (same bytes).
namespace ref {
void PackCodes(const uint8_t* codes, size_t n, int bits, uint8_t* out);
}  // namespace ref
void PackCodes(const uint8_t* codes, size_t n, int bits, uint8_t* out);
// Inverse of PackCodes (SIMD for INT2/INT4, same bytes as ref::UnpackCodes).
namespace ref {
void UnpackCodes(const uint8_t* packed, size_t n, int bits, uint8_t* codes);
}  // namespace ref
void UnpackCodes(const uint8_t* packed, size_t n, int bits, uint8_t* codes);

}  // namespace arrowquant::kernels
