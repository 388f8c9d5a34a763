// What calibration produces per layer and the model file stores beside its weights: timestep-
// grouped activation grids (time-aware), equalization scales (spatial) and activation statistics.
// Quantization concepts: the file format carries them, calibration (calibration.h) fits them.
#pragma once

#include <cstdint>
#include <vector>

namespace arrowquant {

// Activation quantization per timestep group (filled by calibration).
struct TimeAwareParams {
  int32_t num_groups = 0;
  std::vector<int32_t> group_bounds;  // num_groups + 1 timestep boundaries, ascending
  int32_t act_bits = 8;
  std::vector<float> act_scales;         // one per group
  std::vector<int32_t> act_zero_points;  // one per group
};

// DiTAS channel equalization: weights were stored as W / s, activations must be multiplied by s.
struct SpatialParams {
  std::vector<float> equalization_scales;  // one per input channel
  float smoothing_alpha = 0.0f;
};

struct ActivationStats {
  std::vector<float> min, max, absmax;  // per input channel
};

}  // namespace arrowquant
