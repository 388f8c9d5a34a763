// Row kernels: the inner loops of quantization. `ref::` is the scalar reference and the spec;
// the unqualified functions dispatch at run time (Highway) to the best SIMD target compiled in
// and must give bit-identical results (tests/cpp/test_kernels.cc checks every target).
//
// A row of n values is split into groups of g (the last one shorter); per-group arrays are
// indexed by group. Codes are unsigned, one per byte here (packing is separate).
#pragma once

#include <cstddef>
#include <cstdint>

#include "arrowquant/dtype.h"

namespace arrowquant::kernels {

// Rows handled side by side by the GPTQ sweep and the output-error quadratic forms, stored
// column-interleaved: element k of lane l at [k * kRowLanes + l].
constexpr size_t kRowLanes = 8;

namespace ref {
void GroupMinMax(const float* x, size_t n, size_t g, float* mn, float* mx);
// code = round_half_even(clamp((x + offset) * inv_scale, 0, qmax))
void QuantizeGroups(const float* x, size_t n, size_t g, const float* inv_scale, const float* offset,
                    float qmax, uint8_t* codes);
// out = float(code) * scale - offset   (a multiply, then a subtract; never fused)
void DequantizeGroups(const uint8_t* codes, size_t n, size_t g, const float* scale,
                      const float* offset, float* out);
// src holds n values of dtype F32, F16 or BF16.
void ToF32(DType dtype, const void* src, size_t n, float* out);
// Number of NaN and Inf values.
size_t CountNonFinite(const float* x, size_t n);
// Error sums of y against x, in double: out = {sum e^2, sum x^2, sum y^2, sum x y, max |e|}
// (e = x - y). Each sum: partial sums k = i mod 8 over whole chunks of 8 values, the rest
// (i >= n - n mod 8) in order on its own, combined as rest + p[0] + ... + p[7]. The max skips
// NaN (std::max(m, |e|) in index order).
void ErrorSums(const float* x, const float* y, size_t n, double* out);
// The smallest f16 >= x[i] (x[i] >= 0), as bits; +inf when x[i] exceeds the f16 range.
void F32ToF16Up(const float* x, size_t n, uint16_t* out);
// f32 -> F16 or BF16 bits with the dtype table's rounding (round to nearest even).
void FromF32(DType dtype, const float* x, size_t n, uint16_t* out);
// Unpack + dequantize + convert in one: a packed row (bits 2/4/8) to n values of `dtype`
// (F32/F16/BF16) at `out` (may be unaligned). Defined as UnpackCodes, DequantizeGroups, FromF32.
void DequantizePacked(const uint8_t* packed, int bits, size_t n, size_t g, const float* scale,
                      const float* offset, DType dtype, void* out);
// y[k] += a * x[k]   (a multiply, then an add)
void Axpy(float a, const float* x, size_t n, float* y);
// Four rows of a tile's X^T X: out[a * out_stride + k] = sum over r = 0, 1, ..., rows - 1 (in
// that order, from 0) of xi[r * stride + a] * xj[r * stride + k], for a < 4 and k < len.
void SumOuter4(const float* xi, const float* xj, size_t stride, size_t rows, size_t len, float* out,
               size_t out_stride);
// w[k * kRowLanes + l] -= e[l] * u[k] for k < n, every lane l (a multiply, then a subtract).
void LanesAxpy(const float* e, const float* u, size_t n, float* w);
// t[l] += h[k] * v[k * kRowLanes + l] for k = 0, 1, ..., n - 1 in that order, every lane l.
void LanesDot(const double* h, const double* v, size_t n, double* t);
// LanesDot for four rows of h at once (row a at h[a], sums into t + a * kRowLanes): the
// lanes' loads are shared and the four rows' sums run side by side.
void LanesDot4(const double* const* h, const double* v, size_t n, double* t);
}  // namespace ref

void GroupMinMax(const float* x, size_t n, size_t g, float* mn, float* mx);
void QuantizeGroups(const float* x, size_t n, size_t g, const float* inv_scale, const float* offset,
                    float qmax, uint8_t* codes);
void DequantizeGroups(const uint8_t* codes, size_t n, size_t g, const float* scale,
                      const float* offset, float* out);
void ToF32(DType dtype, const void* src, size_t n, float* out);
size_t CountNonFinite(const float* x, size_t n);
void ErrorSums(const float* x, const float* y, size_t n, double* out);
void F32ToF16Up(const float* x, size_t n, uint16_t* out);
void FromF32(DType dtype, const float* x, size_t n, uint16_t* out);
void DequantizePacked(const uint8_t* packed, int bits, size_t n, size_t g, const float* scale,
                      const float* offset, DType dtype, void* out);

void Axpy(float a, const float* x, size_t n, float* y);
void SumOuter4(const float* xi, const float* xj, size_t stride, size_t rows, size_t len, float* out,
               size_t out_stride);
void LanesAxpy(const float* e, const float* u, size_t n, float* w);
void LanesDot(const double* h, const double* v, size_t n, double* t);
void LanesDot4(const double* const* h, const double* v, size_t n, double* t);

// Name of the SIMD target the dispatcher picks on this machine (e.g. "AVX2").
const char* ActiveTarget();

}  // namespace arrowquant::kernels
