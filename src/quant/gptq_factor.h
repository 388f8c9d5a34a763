// GPTQ's factor of the inverse second moments (internal to src/quant; tested directly).
#pragma once

#include <cstdint>
#include <vector>

namespace arrowquant::quant {

// The upper triangular U with H^-1 = U^T U and a positive diagonal, as f32 (row-major m x m),
// from a symmetric positive definite H given as f64 row-major m x m; only its lower triangle is
// read and `a` is used as scratch. Empty when H is not positive definite.
std::vector<float> UpperFactorOfInverse(std::vector<double>& a, uint64_t m);

}  // namespace arrowquant::quant
