// Read-only access to a QuantizedTensor's decoded per-group parameters and unpacked codes, for
// tests, reports and the integer inference kernels' weight preparation.
#pragma once

#include <cstdint>
#include <vector>

#include "arrowquant/quantize.h"

namespace arrowquant::quant {

struct Decoded {
  std::vector<float> scale, offset;  // rows x groups_per_row
  std::vector<uint8_t> codes;        // rows x cols, unpacked
};
Decoded DecodeAll(const QuantizedTensor& q);

// Row r of a view: its groups' scale and offset (`groups` each) and its codes (`cols` bytes).
void DecodeRowOf(const QuantizedView& q, uint64_t r, float* scale, float* offset, uint8_t* codes);

}  // namespace arrowquant::quant
