// GPTQ's factor of the inverse second moments (internal to src/quant; tested directly), and
// what a sweep reads of it.
#pragma once

#include <cstdint>
#include <vector>

namespace arrowquant::quant {

struct BlockFactor {
  uint64_t c0 = 0, m = 0;
  std::vector<float> u;         // upper Cholesky factor of the damped H^-1, row-major m x m
  std::vector<uint64_t> order;  // sweep position -> column within the block
};

// The upper triangular U with H^-1 = U^T U and a positive diagonal, as f32 (row-major m x m),
// from a symmetric positive definite H given as f64 row-major m x m; only its lower triangle is
// read and `a` is used as scratch. Empty when H is not positive definite.
std::vector<float> UpperFactorOfInverse(std::vector<double>& a, uint64_t m);

}  // namespace arrowquant::quant

namespace arrowquant {

struct GptqFactor {
  uint64_t dim = 0, block = 0;
  bool act_order = false;
  std::vector<quant::BlockFactor> blocks;
  std::vector<uint8_t> dead;  // columns whose input never varied
};

}  // namespace arrowquant
