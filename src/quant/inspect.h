// Read-only access to a QuantizedTensor's decoded per-group parameters and unpacked codes, for
// tests and reports.
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

}  // namespace arrowquant::quant
