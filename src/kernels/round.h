// Round to nearest, ties to even, without a libm call: adding and subtracting 1.5 * 2^23 leaves
// an integer in the default rounding mode. Valid for |v| < 2^22, which holds after clamping to
// a code range; both the scalar reference and the SIMD kernels clamp first, then round.
// Requires IEEE arithmetic without fast-math reassociation or FMA contraction (the core is
// built with -ffp-contract=off).
#pragma once

#include <algorithm>

namespace arrowquant::kernels {

inline float RoundSmall(float v) {
  constexpr float kMagic = 12582912.0f;  // 1.5 * 2^23
  return (v + kMagic) - kMagic;
}

// The code of value v (already (x + offset) * inv_scale) in [0, qmax].
inline float ClampRound(float v, float qmax) {
  return RoundSmall(std::min(std::max(v, 0.0f), qmax));
}

}  // namespace arrowquant::kernels
