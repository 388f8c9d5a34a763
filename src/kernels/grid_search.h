// The error-minimizing grid's candidate search, the inner loop of quantization with
// Grid::kSearch. `ref::` is the scalar specification; SearchAsymGroups dispatches at run time
// (Highway) to a version that runs groups side by side, one group per lane, each group's
// arithmetic in exactly the reference's order, so results are bit-identical on every target
// (tests/cpp/test_kernels.cc).
#pragma once

#include <cstddef>

namespace arrowquant::kernels {

// Search settings of llama.cpp's k-quants (make_qkx2_quants): 21 candidate scalings of the
// range, from (qmax - 1) to (qmax + 1) steps across it, each refitted by least squares.
inline constexpr int kSearchSteps = 20;
inline constexpr float kSearchRMin = -1.0f;
inline constexpr float kSearchRDelta = 0.1f;

namespace ref {
// Sum of squared errors of x[0..len) quantized to the nearest code of (scale, offset):
// code = round(clamp((x + offset) / scale)), value = code * scale - offset. Float partial sums
// k = i mod 8 over whole chunks of 8 values, the rest in double, combined in double (the rest
// first, then k = 0..7).
double GroupSse(const float* x, size_t len, float scale, float offset, float qmax);
// Least squares x ~ s * L + mn for fixed codes L (sums as GroupSse's, then double math); with
// `force_mn_nonpositive`, a positive mn is set to 0 and s refitted. False when degenerate.
bool FitLinear(const float* x, const float* L, size_t n, bool force_mn_nonpositive, float* s,
               float* mn);
// For `count` groups of n values (group j at x + j * n, its min mn[j] and max mx[j]): the
// asymmetric search. Candidates: the min/max grid (scale (hi - lo) / qmax, offset -lo, with
// lo = min(mn, 0), hi = max(mx, 0)), then for k = 0..20 the codes of x over [lo, mx] at
// (qmax - 1 + 0.1 k) steps refitted by FitLinear (offset kept >= 0); each scored by GroupSse,
// the first lowest wins. Writes the winner's scale and offset.
void SearchAsymGroups(const float* x, size_t n, size_t count, const float* mn, const float* mx,
                      float qmax, float* scale, float* offset);
// GroupSse of `count` groups of n values (group j at x + j * n) at `cands` candidate grids each:
// sse[c * count + j] = GroupSse(group j, scale[c * count + j], offset[c * count + j]).
void GroupSseCandidates(const float* x, size_t n, size_t count, size_t cands, const float* scale,
                        const float* offset, float qmax, double* sse);
}  // namespace ref

void GroupSseCandidates(const float* x, size_t n, size_t count, size_t cands, const float* scale,
                        const float* offset, float qmax, double* sse);
void SearchAsymGroups(const float* x, size_t n, size_t count, const float* mn, const float* mx,
                      float qmax, float* scale, float* offset);

}  // namespace arrowquant::kernels
