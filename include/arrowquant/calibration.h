// Calibration statistics, timestep-aware activation parameters and DiTAS channel equalization.
//
// Activations (the inputs of quantizable layers) are summarised per layer and per denoising
// timestep while the FP model samples: per input channel min / max / absmax, and a signed
// log-linear histogram of all values (fixed size, so memory is bounded whatever the data).
// Timestep groups are then fitted on those summaries: adjacent timesteps are merged so that each
// group's activation scale / zero-point fits the values it will see (time_aware.cc), and the
// channel equalization scales s_i = max|W_i|^a / max|X_i|^(1-a) are derived from the weights and
// the activations aggregated over timesteps (spatial.cc).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "arrowquant/activation_params.h"
#include "arrowquant/status.h"
#include "arrowquant/tensor.h"

namespace arrowquant {

// Signed log-linear histogram: 16 bins per octave over |x| in [2^-24, 2^16), one set of bins for
// each sign, one bin for |x| < 2^-24 (counted as zero); values beyond 2^16 land in the last bin.
struct ActivationHistogram {
  static constexpr int kBinsPerOctave = 16;
  static constexpr int kMinExponent = -24;
  static constexpr int kMaxExponent = 16;
  static constexpr int kBinsPerSign = (kMaxExponent - kMinExponent) * kBinsPerOctave;
  static constexpr int kNumBins = 2 * kBinsPerSign + 1;  // [negatives reversed, zero, positives]
  static constexpr int kZeroBin = kBinsPerSign;

  static int BinOf(float x);
  // The value a bin stands for (midpoint of its range; 0 for the zero bin).
  static double BinValue(int bin);
};

// The activations one layer saw at one timestep.
struct TimestepActivationStats {
  int32_t timestep = 0;
  uint64_t count = 0;  // values summarised
  std::vector<float> channel_min, channel_max, channel_absmax;
  std::vector<uint64_t> histogram;  // ActivationHistogram::kNumBins counts
};

// The memory layout of one activation tensor: `outer` blocks of `channels` x `inner` values
// (a Linear input [..., C] is outer = rows, inner = 1; a Conv2d input [N, C, H, W] is outer = N,
// inner = H * W).
struct ActivationLayout {
  uint64_t outer = 0;
  uint64_t channels = 0;
  uint64_t inner = 1;
};

class ActivationCollector {
 public:
  static Result<std::unique_ptr<ActivationCollector>> Make(uint64_t channels);
  // Adds a float32 activation tensor seen at `timestep`. Non-finite values are an error: they
  // would poison every range derived from them. `threads` split the rows (`outer`); the result
  // is the same for any count (minima, maxima and counts merge exactly).
  Status Add(int32_t timestep, std::span<const float> values, const ActivationLayout& layout,
             int threads = 1);
  // Restores statistics saved earlier (the calibration cache).
  Status Merge(const TimestepActivationStats& in);

  uint64_t channels() const { return channels_; }
  const std::map<int32_t, TimestepActivationStats>& by_timestep() const { return stats_; }
  // Per-channel min / max / absmax over every timestep.
  ActivationStats Overall() const;

 private:
  explicit ActivationCollector(uint64_t channels) : channels_(channels) {}
  uint64_t channels_;
  std::map<int32_t, TimestepActivationStats> stats_;
};

enum class ClipMethod { kMinMax, kPercentile, kMse };

struct TimeGroupingOptions {
  int groups = 1;         // K
  bool adaptive = false;  // false: K groups of (nearly) equal numbers of timesteps
  int act_bits = 8;       // 4 or 8
  ClipMethod clip = ClipMethod::kMse;
  double percentile = 99.99;  // for kPercentile: of the values on each side of zero
  int32_t num_train_timesteps = 1000;
};

// Asymmetric activation grid for one range: q = clamp(round(x / scale) + zero_point, 0, 2^b - 1).
struct ActivationGrid {
  float scale = 1.0f;
  int32_t zero_point = 0;
};
// The grid for [lo, hi] (widened to include 0, so that zero stays exact).
ActivationGrid GridForRange(double lo, double hi, int bits);
// Expected squared error per value of quantizing the histogram with `grid` (rounding noise of
// scale^2 / 12 inside the range, the clipped distance outside it).
double ExpectedSquaredError(std::span<const uint64_t> histogram, const ActivationGrid& grid,
                            int bits);
// The grid for one set of statistics (merged over the timesteps of a group) and its error.
std::pair<ActivationGrid, double> FitActivationGrid(std::span<const uint64_t> histogram, double lo,
                                                    double hi, const TimeGroupingOptions& options);

// Groups the layer's calibration timesteps and fits one activation grid per group. Group g covers
// timesteps [group_bounds[g], group_bounds[g + 1]); the outer bounds are 0 and
// num_train_timesteps, inner ones lie halfway between calibration timesteps of adjacent groups.
// Adaptive grouping is a dynamic program over the timestep axis that minimises the summed
// expected squared error of the K groups.
Result<TimeAwareParams> FitTimeGroups(const ActivationCollector& collector,
                                      const TimeGroupingOptions& options);

// max |W[:, i]| for every input channel i of a weight [out, in, ...] (Linear or ConvNd), any
// float dtype.
Result<std::vector<float>> InputChannelAbsMax(const TensorView& weight);

// DiTAS / SmoothQuant-style equalization: s_i = max|W_i|^alpha / max|X_i|^(1 - alpha) (alpha 0.5:
// sqrt(max|W_i| / max|X_i|)); weights are stored as W / s and activations multiplied by s.
// Channels whose activations or weights are all zero get s_i = 1; s is clamped to [1e-4, 1e4].
Result<std::vector<float>> EqualizationScales(std::span<const float> weight_absmax,
                                              std::span<const float> act_absmax, double alpha);

// The one place equalization touches weights: values of a row-major f32 tensor of `shape`
// [out, in, inner...] become W / s (kDivide: how they are stored) or W * s (kMultiply: back to
// the original) along the input-channel axis 1; every kernel position of input channel i shares
// s_i. Fails unless rank >= 2 and shape[1] == s.size().
enum class Equalize : uint8_t { kDivide, kMultiply };
Status ScaleInputChannels(std::span<float> values, std::span<const uint64_t> shape,
                          std::span<const float> s, Equalize direction,
                          std::string_view tensor = "tensor");

}  // namespace arrowquant
