// A borrowed view of a tensor's bytes with its dtype and shape. Never owns memory: whoever
// hands out a TensorView keeps the bytes alive (a Checkpoint, a numpy array, ...).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "arrowquant/dtype.h"

namespace arrowquant {

struct TensorView {
  std::string_view name;
  DType dtype = DType::kF32;
  std::vector<uint64_t> shape;
  std::span<const std::byte> data;

  uint64_t num_elements() const {
    uint64_t n = 1;
    for (uint64_t d : shape) n *= d;
    return n;
  }
};

}  // namespace arrowquant
