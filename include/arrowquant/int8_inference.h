// Integer inference for layers with quantized activations (W8A8, W4A8): the input is rounded
// to the activation grid of the current timestep group (uint8 codes), multiplied with the
// weight's integer codes in int32 (AVX-512 VNNI where the CPU has it, the scalar reference
// otherwise; Int8Accelerated() says which), each weight group's sum rescaled once, and the
// zero-points folded in afterwards (kernels/int8_gemm.h has the algebra). The result equals
// the floating-point simulation (fake-quantize the input, multiply with the dequantized weight)
// up to float rounding: the integer sums are exact.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "arrowquant/quantize.h"
#include "arrowquant/status.h"

namespace arrowquant {

// The activation grid: x = scale * (code - zero), codes 0 .. 255.
struct ActGrid {
  float scale = 1.0f;
  float zero = 0.0f;  // an integer value
};

// A quantized weight rearranged for the integer kernel (panels of 16 output channels, codes
// minus their bias as int8, per-group scales and offset terms as floats). Holds about the
// weight's INT8 bytes.
class Int8Weight {
 public:
  // Any stored format whose codes fit int8 after the bias (every width <= 8) and whose groups
  // are a multiple of 4 columns (32 .. 256, or one group per row).
  static Result<std::unique_ptr<Int8Weight>> Make(const QuantizedView& q,
                                                  const QuantOptions& options = {});
  uint64_t rows() const { return rows_; }
  uint64_t cols() const { return cols_; }
  size_t nbytes() const;

  struct Impl;
  const Impl& impl() const { return *impl_; }
  ~Int8Weight();

 private:
  Int8Weight() = default;
  uint64_t rows_ = 0, cols_ = 0;
  std::unique_ptr<Impl> impl_;
};

// y (m x rows) = x (m x cols, row-major) through the weight, plus bias (empty: none).
Status Int8Linear(std::span<const float> x, uint64_t m, const Int8Weight& w, ActGrid grid,
                  std::span<const float> bias, std::span<float> y,
                  const QuantOptions& options = {});

struct Conv2dShape {
  uint64_t batch = 1, channels = 0, height = 0, width = 0;  // the input, NCHW
  uint64_t kernel_h = 1, kernel_w = 1;
  uint64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dilation_h = 1, dilation_w = 1;
  uint64_t out_h() const;
  uint64_t out_w() const;
};

// A 2-D convolution (groups = 1, zero padding) with the weight (out, channels, kh, kw) as rows
// x (channels * kh * kw): x NCHW in, y (batch, rows, out_h, out_w) out.
Status Int8Conv2d(std::span<const float> x, const Conv2dShape& shape, const Int8Weight& w,
                  ActGrid grid, std::span<const float> bias, std::span<float> y,
                  const QuantOptions& options = {});

// Whether the integer kernel runs SIMD on this CPU, and its name ("avx512-vnni" / "scalar").
bool Int8Accelerated();
const char* Int8KernelName();

}  // namespace arrowquant
