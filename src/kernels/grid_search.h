// The error-minimizing grid's candidate search, the inner loop of quantization with
// Grid::kSearch. `ref::` is the scalar specification; SearchAsymGroups dispatches at run time
// (Highway) to a version that runs groups side by side, one group per lane, each group's
// arithmetic in exactly the reference's order, so results are bit-identical on every target
// (tests/cpp/test_kernels.cc).
#pragma once

#include <cstddef>
#include <cstdint>

namespace arrowquant::kernels {

// Search settings of llama.cpp's k-quants (make_qkx2_quants): 21 candidate scalings of the
// range, from (qmax - 1) to (qmax + 1) steps across it, each refitted by least squares.
inline constexpr int kSearchSteps = 20;
inline constexpr float kSearchRMin = -1.0f;
inline constexpr float kSearchRDelta = 0.1f;
// The asymmetric search (SearchAsymGroups) takes every kSearchStride-th of those steps (7 of
// 21), measures (requantizes) only the kSearchTop whose fits leave the lowest residual with their
// own codes, then refits the winner to its own nearest codes kSearchRefits times (Lloyd steps).
// Against scoring all 21 by their requantized error (the search until 2026-12), with coded scales
// (bench/search_error.py): lower weight error at 2, 3 and 4 bits on N(0, 0.02), Student-t and
// the reference models' weights, much lower at group sizes 64-256; at 8 bits within +-0.3%;
// about a third of the arithmetic.
inline constexpr int kSearchStride = 3;
inline constexpr int kSearchTop = 3;
inline constexpr int kSearchRefits = 3;

// The row's coded-scale grid for CodedNeighbours.
struct CodedGrid {
  float d, dmin;
  int cmax;
  bool sym;
  float bias, qmax;
};

// The symmetric search with a float scale per group (FitRow's kF16/kF32 symmetric formats).
struct SymSearch {
  float bias;          // codes run from -bias to bias - 1 (stored + bias)
  bool f16;            // scales stored as f16 (else f32, as computed)
  bool keep_extremes;  // quant::Format::keep_extremes
};

namespace ref {
// A scale as stored: f16 rounded to nearest (`up`: the smallest f16 >= s, for s >= 0, which
// keeps the min/max grid's range covering the group), its bits in *bits; f32 as it is.
float StoreScale(float s, bool f16, bool up, uint16_t* bits);
// For `count` groups of n values (group j at x + j * n, its min mn[j] and max mx[j]), with
// amax = max(|mn|, |mx|), candidates in this order, each scored by GroupSse at (s, s * bias)
// with codes 0..2 bias - 1 and winning only if strictly lower than the best so far (from +inf):
// 1. the min/max grid: amax / (bias - 1), stored rounding up;
// 2. with keep_extremes and -mn >= mx: amax / bias, stored rounding up, if it keeps the extremes;
// 3. if amax > 0, for k = 0..20: t = (bias - 1) + 1.5 k / 20, codes L = ClampRound(x / (amax / t)
//    + bias, 2 bias - 1) - bias, the least-squares scale sum(L x) / sum(L L) (double sums in
//    value order; only where both are > 0), stored to nearest, if it keeps the extremes.
// "Keeps the extremes": keep_extremes is off, or mx <= (bias - 0.5) s and -mn <= (bias + 0.5) s.
// Writes the winner's stored scale and, with f16, its bits (both 0 if none won).
void SearchSymGroups(const float* x, size_t n, size_t count, const float* mn, const float* mx,
                     const SymSearch& p, float* scale, uint16_t* bits);
// Sum of squared errors of x[0..len) quantized to the nearest code of (scale, offset):
// code = round(clamp((x + offset) / scale)), value = code * scale - offset. Float partial sums
// k = i mod 8 over whole chunks of 8 values, the rest in double, combined in double (the rest
// first, then k = 0..7).
double GroupSse(const float* x, size_t len, float scale, float offset, float qmax);
// Least squares x ~ s * L + mn for fixed codes L (sums as GroupSse's, then double math); with
// `force_mn_nonpositive`, a positive mn is set to 0 and s refitted. False when degenerate.
bool FitLinear(const float* x, const float* L, size_t n, bool force_mn_nonpositive, float* s,
               float* mn);
// FitLinear with force_mn_nonpositive, given the group's sums of x and x * x (in FitLinear's
// order), in double, plus the fit's residual sum (x - s * L - mn)^2 from the sums.
bool FitLinearResidual(const float* x, const float* L, size_t n, double sx, double sxx, double* s,
                       double* mn, double* residual);
// For `count` groups of n values (group j at x + j * n, its min mn[j] and max mx[j]): the
// asymmetric search. First candidate: the min/max grid (scale (hi - lo) / qmax, offset -lo, with
// lo = min(mn, 0), hi = max(mx, 0)), scored by GroupSse. For k = 0, 3, ..., 18 the codes of x
// over [lo, mx] at (qmax - 1 + 0.1 k) steps are refitted by FitLinearResidual; the kSearchTop
// lowest residuals (earlier k first on ties) are then scored by GroupSse in that order. Then
// kSearchRefits times: the current winner's nearest codes refitted, scored by GroupSse. At each
// score the candidate wins only if strictly lower. Writes the winner's scale and offset.
void SearchAsymGroups(const float* x, size_t n, size_t count, const float* mn, const float* mx,
                      float qmax, float* scale, float* offset);
// The coded-scale neighbour search of `count` groups of n values (group j at x + j * n) whose
// scale and offset are coded under the row's super-scales d and dmin (code range 0..cmax):
// candidates k = 3 (a + 1) + (b + 1) for a, b in -1, 0, 1 (b = 0 only when `sym`), scale code
// ls0[j] + a and offset code lm0[j] + b, valid when both lie in 0..cmax; decoded as
// scale = d * ls, offset = sym ? scale * bias : dmin * lm (DecodeGroup's arithmetic); scored by
// GroupSse; the first strictly lowest wins (none valid: a = b = 0). Writes the winner's codes
// (lm untouched when `sym`).
void CodedNeighbours(const float* x, size_t n, size_t count, const int* ls0, const int* lm0,
                     const CodedGrid& grid, uint8_t* ls, uint8_t* lm);
}  // namespace ref

void CodedNeighbours(const float* x, size_t n, size_t count, const int* ls0, const int* lm0,
                     const CodedGrid& grid, uint8_t* ls, uint8_t* lm);
void SearchAsymGroups(const float* x, size_t n, size_t count, const float* mn, const float* mx,
                      float qmax, float* scale, float* offset);
void SearchSymGroups(const float* x, size_t n, size_t count, const float* mn, const float* mx,
                     const SymSearch& p, float* scale, uint16_t* bits);

}  // namespace arrowquant::kernels
