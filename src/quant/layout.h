// The byte layout of a quantized tensor's four buffers, row by row, and how one row's fitted
// parameters are stored into them (docs/format.md, "Bit layouts"). Shared by the quantizers
// (round-to-nearest and GPTQ) and dequantization.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

#include "arrowquant/quantize.h"
#include "arrowquant/tensor.h"
#include "kernels/pack.h"
#include "quant/group_fit.h"

namespace arrowquant::quant {

// A weight the quantizers accept: F32/F16/BF16, rank >= 1, bytes matching the shape.
Status CheckWeight(const TensorView& w);
// The error for a tensor with NaN/Inf values (bad: their count per row), OK when there are none.
Status NonFiniteStatus(std::string_view name, const std::vector<uint64_t>& bad);
// rows = shape[0] (1 for rank 1), cols = the product of the other dimensions.
void RowsCols(const std::vector<uint64_t>& shape, uint64_t* rows, uint64_t* cols);

struct Layout {
  uint64_t rows = 0, cols = 0, g = 0, groups = 0;
  size_t code_row_bytes = 0, scale_row_bytes = 0, zero_row_bytes = 0, super_row_bytes = 0;
};

inline Layout MakeLayout(const QuantSpec& spec, uint64_t rows, uint64_t cols) {
  Layout l;
  l.rows = rows;
  l.cols = cols;
  l.g = spec.group_size == 0 ? std::max<uint64_t>(cols, 1) : static_cast<uint64_t>(spec.group_size);
  l.groups = cols == 0 ? 0 : (cols + l.g - 1) / l.g;
  const bool sym = spec.scheme == Scheme::kSymmetric;
  l.code_row_bytes = kernels::PackedBytes(cols, spec.bits);
  switch (spec.scales) {
    case ScaleStorage::kF16:
      l.scale_row_bytes = 2 * l.groups;
      l.zero_row_bytes = sym ? 0 : kernels::PackedBytes(l.groups, spec.bits);
      break;
    case ScaleStorage::kF32:
      l.scale_row_bytes = 4 * l.groups;
      l.zero_row_bytes = sym ? 0 : kernels::PackedBytes(l.groups, spec.bits);
      break;
    case ScaleStorage::kCoded:
      l.scale_row_bytes = kernels::PackedBytes(l.groups, spec.scale_bits);
      l.zero_row_bytes = sym ? 0 : kernels::PackedBytes(l.groups, spec.scale_bits);
      l.super_row_bytes = sym ? 2 : 4;
      break;
  }
  return l;
}

inline Layout MakeLayout(const QuantizedTensor& q) {
  return MakeLayout(q.spec, q.rows, q.cols);
}

// Row r's stored parameters (StoreRow's inverse).
void LoadRow(const QuantizedView& q, const Layout& l, uint64_t r, RowStored& st);

inline void StoreRow(const QuantSpec& spec, const Layout& l, const RowStored& st, uint64_t r,
                     QuantizedTensor& q) {
  uint8_t* sc = q.scales.data() + r * l.scale_row_bytes;
  uint8_t* zp = q.zeros.data() + r * l.zero_row_bytes;
  switch (spec.scales) {
    case ScaleStorage::kF16: std::memcpy(sc, st.scale_f16.data(), l.scale_row_bytes); break;
    case ScaleStorage::kF32: std::memcpy(sc, st.scale_f32.data(), l.scale_row_bytes); break;
    case ScaleStorage::kCoded: {
      kernels::PackCodes(st.ls.data(), l.groups, spec.scale_bits, sc);
      uint8_t* sp = q.super_scales.data() + r * l.super_row_bytes;
      std::memcpy(sp, &st.d, 2);
      if (spec.scheme == Scheme::kAsymmetric) {
        kernels::PackCodes(st.lm.data(), l.groups, spec.scale_bits, zp);
        std::memcpy(sp + 2, &st.dmin, 2);
      }
      return;
    }
  }
  if (spec.scheme == Scheme::kAsymmetric)
    kernels::PackCodes(st.zero.data(), l.groups, spec.bits, zp);
}

}  // namespace arrowquant::quant
