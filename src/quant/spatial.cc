// Spatial quantization: DiTAS channel equalization (calibration.h). The direction matters:
// activations are multiplied by s and weights divided by it, so with alpha = 0.5 both end up with
// per-channel maxima sqrt(max|W_i| * max|X_i|) and the activation outlier channels shrink.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "arrowquant/calibration.h"
#include "kernels/row_kernels.h"

namespace arrowquant {

Result<std::vector<float>> InputChannelAbsMax(const TensorView& w) {
  if (w.shape.size() < 2) {
    return Status(StatusCode::kInvalidArgument,
                  std::string(w.name) + ": equalization needs a weight of rank >= 2");
  }
  if (w.dtype != DType::kF32 && w.dtype != DType::kF16 && w.dtype != DType::kBF16) {
    return Status(StatusCode::kUnsupported,
                  std::string(w.name) + ": equalization needs F32, F16 or BF16 weights");
  }
  const uint64_t out = w.shape[0], in = w.shape[1];
  const uint64_t inner = in && out ? w.num_elements() / (out * in) : 0;
  if (w.data.size() != w.num_elements() * ElementBytes(w.dtype)) {
    return Status(StatusCode::kSizeMismatch, std::string(w.name) + ": byte size does not match");
  }
  std::vector<float> amax(in, 0.0f), row(in * inner);
  const size_t row_bytes = in * inner * ElementBytes(w.dtype);
  for (uint64_t r = 0; r < out; ++r) {
    kernels::ToF32(w.dtype, w.data.data() + r * row_bytes, row.size(), row.data());
    for (uint64_t c = 0; c < in; ++c) {
      for (uint64_t k = 0; k < inner; ++k) {
        amax[c] = std::max(amax[c], std::fabs(row[c * inner + k]));
      }
    }
  }
  return amax;
}

Result<std::vector<float>> EqualizationScales(std::span<const float> w, std::span<const float> x,
                                              double alpha) {
  if (w.size() != x.size()) {
    return Status(StatusCode::kInvalidArgument,
                  "equalization: " + std::to_string(w.size()) + " weight channels but " +
                      std::to_string(x.size()) + " activation channels");
  }
  if (!(alpha >= 0.0 && alpha <= 1.0)) {
    return Status(StatusCode::kInvalidArgument, "equalization alpha must be in [0, 1]");
  }
  std::vector<float> s(w.size(), 1.0f);
  for (size_t i = 0; i < w.size(); ++i) {
    const double wi = w[i], xi = x[i];
    if (!(wi > 0) || !(xi > 0) || !std::isfinite(wi) || !std::isfinite(xi)) continue;
    const double v = std::pow(wi, alpha) / std::pow(xi, 1.0 - alpha);
    s[i] = static_cast<float>(std::clamp(v, 1e-4, 1e4));
  }
  return s;
}

Status ScaleInputChannels(std::span<float> values, std::span<const uint64_t> shape,
                          std::span<const float> s, Equalize direction, std::string_view tensor) {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  if (shape.size() < 2 || shape[1] != s.size() || n != values.size()) {
    return Status(StatusCode::kInvalidArgument,
                  "tensor '" + std::string(tensor) + "': " + std::to_string(s.size()) +
                      " equalization scales do not fit a weight [out, in, ...] with " +
                      (shape.size() < 2 ? std::string("rank < 2")
                                        : std::to_string(shape[1]) + " input channels"));
  }
  const size_t in = s.size(), inner = n / std::max<uint64_t>(1, shape[0] * in);
  for (size_t i = 0; i < values.size(); ++i) {
    const float si = s[(i / inner) % in];
    values[i] = direction == Equalize::kDivide ? values[i] / si : values[i] * si;
  }
  return Status::OK();
}

}  // namespace arrowquant
