#include "kernels/pack.h"

#include <cstring>

namespace arrowquant::kernels {

namespace ref {

void PackCodes(const uint8_t* codes, size_t n, int bits, uint8_t* out) {
  if (n == 0) return;
  switch (bits) {
    case 8: std::memcpy(out, codes, n); return;
    case 4: {
      size_t i = 0;
      for (; i + 2 <= n; i += 2) out[i / 2] = PackInt4Pair(codes[i], codes[i + 1]);
      if (i < n) out[i / 2] = PackInt4Pair(codes[i], 0);
      return;
    }
    case 2: {
      size_t i = 0;
      for (; i + 4 <= n; i += 4) {
        out[i / 4] = PackInt2Quad(codes[i], codes[i + 1], codes[i + 2], codes[i + 3]);
      }
      if (i < n) {
        uint8_t e[4] = {0, 0, 0, 0};
        for (size_t k = 0; i + k < n; ++k) e[k] = codes[i + k];
        out[i / 4] = PackInt2Quad(e[0], e[1], e[2], e[3]);
      }
      return;
    }
    default: {  // generic LSB-first bit stream (6-bit scale codes)
      const size_t nbytes = PackedBytes(n, bits);
      std::memset(out, 0, nbytes);
      const uint32_t mask = (1u << bits) - 1u;
      for (size_t k = 0; k < n; ++k) {
        const size_t bit = k * static_cast<size_t>(bits);
        const uint32_t v = (codes[k] & mask) << (bit % 8);
        out[bit / 8] |= static_cast<uint8_t>(v);
        if ((bit % 8) + static_cast<size_t>(bits) > 8)
          out[bit / 8 + 1] |= static_cast<uint8_t>(v >> 8);
      }
    }
  }
}

void UnpackCodes(const uint8_t* packed, size_t n, int bits, uint8_t* codes) {
  if (n == 0) return;
  switch (bits) {
    case 8: std::memcpy(codes, packed, n); return;
    case 4:
      for (size_t i = 0; i < n; ++i) codes[i] = (packed[i / 2] >> (4 * (i % 2))) & 0x0f;
      return;
    case 2:
      for (size_t i = 0; i < n; ++i) codes[i] = (packed[i / 4] >> (2 * (i % 4))) & 0x03;
      return;
    default: {
      const uint32_t mask = (1u << bits) - 1u;
      for (size_t k = 0; k < n; ++k) {
        const size_t bit = k * static_cast<size_t>(bits);
        uint32_t v = packed[bit / 8] >> (bit % 8);
        if ((bit % 8) + static_cast<size_t>(bits) > 8)
          v |= static_cast<uint32_t>(packed[bit / 8 + 1]) << (8 - bit % 8);
        codes[k] = static_cast<uint8_t>(v & mask);
      }
    }
  }
}

}  // namespace ref

}  // namespace arrowquant::kernels
