// Integer GEMM for quantized activations times quantized weights (W8A8 / W4A8 inference):
// uint8 activation codes times int8 weight codes, accumulated exactly in int32 per weight group,
// each group's sum rescaled once by its scale. `ref::` is the scalar spec; the unqualified
// function dispatches at run time and must give bit-identical outputs (the integer sums are
// exact, and every float step is the same fused multiply-add in the same order).
//
// The math. A weight w[n][k] = s[n][g] q[n][k] - o[n][g] (codes q unsigned, group g = k / G);
// an activation x[m][k] = sx (a[m][k] - zx) (codes a in [0, 255]). With q' = q - qbias (int8):
//   y[m][n] = sx * ( sum_g s[n][g] A[m][n][g] + sum_g B[n][g] R[m][g] - zx c[n] ) + bias[n]
//   A[m][n][g] = sum over k in g of q'[n][k] a[m][k]     (exact int32: |A| < 2^24 for G <= 256)
//   R[m][g]    = sum over k in g of a[m][k]              (exact in float)
//   B[n][g]    = qbias s[n][g] - o[n][g]
//   c[n]       = sum_k w[n][k]
// Per output: acc = 0; for each group g in order: acc = fma(float(A), s, acc);
// acc = fma(R, B, acc). Then t = fma(-zx, c, acc); y = fma(t, sx, bias).
//
// Layouts (bytes and floats the caller prepares, Int8Panels):
// - weights in panels of kPanel = 16 output columns; panel p holds, for k4 = 0 .. k4s - 1, 16
//   lanes of 4 consecutive k: w[((p * k4s + k4) * 16 + lane) * 4 + j] = q'[16 p + lane][4 k4 + j].
//   Columns past N and k past K are 0.
// - scale and bias_r: [p][g][16] floats (s and B of column 16 p + lane, group g); col: [P * 16].
// - activations: the 4 codes of row m, quad k4 at x + m * m_stride + k4 * k4_stride (row-major:
//   m_stride = the row's bytes, k4_stride = 4; quad-interleaved, as convolutions pack them:
//   m_stride = 4, k4_stride = 4 * rows). Codes past K may hold anything (they meet zero
//   weights). rsum: [m][groups] floats.
#pragma once

#include <cstddef>
#include <cstdint>

namespace arrowquant::kernels {

constexpr size_t kPanel = 16;  // output columns per weight panel
constexpr size_t kQuad = 4;    // k values per int32 lane step (the VNNI dot product's width)
static_assert(kPanel * kQuad == 64, "a panel step is one 512-bit vector of int8");

struct Int8Panels {
  const int8_t* w = nullptr;
  const float* scale = nullptr;
  const float* bias_r = nullptr;
  const float* col = nullptr;
  size_t n = 0;         // output columns
  size_t k4s = 0;       // ceil(K / 4)
  size_t groups = 0;    // weight groups per row
  size_t group_k4 = 0;  // k4 steps per group (the last group may be shorter)
  size_t panels() const { return (n + kPanel - 1) / kPanel; }
};

namespace ref {
// y[m * ldy + n] for m < rows, n < w.n (bias may be null: 0).
void Int8Gemm(const uint8_t* x, size_t m_stride, size_t k4_stride, const float* rsum, size_t rows,
              const Int8Panels& w, float sx, float zx, const float* bias, float* y, size_t ldy);
}  // namespace ref

void Int8Gemm(const uint8_t* x, size_t m_stride, size_t k4_stride, const float* rsum, size_t rows,
              const Int8Panels& w, float sx, float zx, const float* bias, float* y, size_t ldy);

// Whether Int8Gemm runs a SIMD integer dot product on this CPU (AVX-512 VNNI) rather than the
// scalar reference; and its name.
bool Int8GemmAccelerated();
const char* Int8GemmTarget();

// codes[k] = clamp(round_half_even(x[k] / scale) + zero, 0, 255) for k < n: the rounding of
// arrowquant.torch's fake quantization (a float division, then round half to even; NaN gives 0).
// GroupSums: rsum[i] = the sum of codes[i g .. min(n, (i + 1) g)), as a float.
namespace ref {
void QuantizeActivations(const float* x, size_t n, float scale, float zero, uint8_t* codes);
void GroupSums(const uint8_t* codes, size_t n, size_t g, float* rsum);
}  // namespace ref
void QuantizeActivations(const float* x, size_t n, float scale, float zero, uint8_t* codes);
void GroupSums(const uint8_t* codes, size_t n, size_t g, float* rsum);

// The quad-interleaved patch rows of a stride-1 convolution (im2col): for the positions
// pos0 + t, t < len, of one image whose codes are `xp` (channels x hp x wp, zero padding already
// in the borders, and (kw - 1) * dil_w + 16 readable bytes past the last one), and k < k4s * 4:
//   dst[(k / 4) * plane + t * 4 + k % 4] = xp[(c * hp + i * dil_h) * wp + j * dil_w + pos0 + t]
// with k = (c * kh + i) * kw + j for k < channels * kh * kw, and 0 past it. Position oy * wp + ox
// is output pixel (oy, ox); a run may go on past the row's last pixel (the callers drop those).
struct PatchShape {
  size_t channels = 0, hp = 0, wp = 0, kh = 1, kw = 1, dil_h = 1, dil_w = 1, k4s = 0;
};
namespace ref {
void GatherQuads(const uint8_t* xp, const PatchShape& s, size_t pos0, size_t len, uint8_t* dst,
                 size_t plane);
}  // namespace ref
void GatherQuads(const uint8_t* xp, const PatchShape& s, size_t pos0, size_t len, uint8_t* dst,
                 size_t plane);

}  // namespace arrowquant::kernels
