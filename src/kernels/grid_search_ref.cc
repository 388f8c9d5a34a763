#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "arrowquant/dtype.h"
#include "kernels/grid_search.h"
#include "kernels/round.h"

namespace arrowquant::kernels::ref {

namespace {
constexpr int kSteps = kSearchSteps;
constexpr float kRMin = kSearchRMin;
constexpr float kRDelta = kSearchRDelta;
}  // namespace

double GroupSse(const float* x, size_t len, float scale, float offset, float qmax) {
  const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
  constexpr size_t kLanes = 8;
  float part[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    for (size_t k = 0; k < kLanes; ++k) {
      const float q = ClampRound((x[i + k] + offset) * inv, qmax);
      const float p = q * scale;
      const float e = (p - offset) - x[i + k];
      part[k] += e * e;
    }
  }
  double sse = 0;
  for (; i < len; ++i) {
    const float q = ClampRound((x[i] + offset) * inv, qmax);
    const float p = q * scale;
    const float e = (p - offset) - x[i];
    sse += static_cast<double>(e) * e;
  }
  for (float v : part) sse += v;
  return sse;
}

namespace {

constexpr size_t kLanes = 8;

// Sums over a group of a(i) and b(i) (each one float term per value, its double twin for the
// rest): float partial sums k = i mod 8 over whole chunks of 8, the rest in double first, then
// k = 0..7. Every sum of this file is taken in this order.
template <class Term>
void PartialSums(size_t n, Term&& term, double* out, size_t sums) {
  float part[3][kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t k = 0; k < kLanes; ++k) {
      float t[3];
      term(i + k, t);
      for (size_t q = 0; q < sums; ++q) part[q][k] += t[q];
    }
  }
  double acc[3] = {};
  for (; i < n; ++i) {
    double t[3];
    term(i, t);
    for (size_t q = 0; q < sums; ++q) acc[q] += t[q];
  }
  for (size_t q = 0; q < sums; ++q) {
    for (size_t k = 0; k < kLanes; ++k) acc[q] += part[q][k];
    out[q] = acc[q];
  }
}

// sum x and sum x^2.
void Moments(const float* x, size_t n, double* sx, double* sxx) {
  double m[2];
  PartialSums(
      n,
      [&](size_t i, auto* t) {
        using T = std::remove_pointer_t<decltype(t)>;
        t[0] = static_cast<T>(x[i]);
        t[1] = static_cast<T>(x[i]) * static_cast<T>(x[i]);
      },
      m, 2);
  *sx = m[0];
  *sxx = m[1];
}

// sum L, sum L^2, sum x L (codes are small integers: their float sums are exact).
void CodeSums(const float* x, const float* L, size_t n, double* sl, double* sl2, double* sxl) {
  double m[3];
  PartialSums(
      n,
      [&](size_t i, auto* t) {
        using T = std::remove_pointer_t<decltype(t)>;
        const T l = static_cast<T>(L[i]);
        t[0] = l;
        t[1] = l * l;
        t[2] = static_cast<T>(x[i]) * l;
      },
      m, 3);
  *sl = m[0];
  *sl2 = m[1];
  *sxl = m[2];
}

// The least-squares solve x ~ ss * L + mm from the sums; with force_mn_nonpositive a positive
// mm is set to 0 and ss refitted. False when degenerate.
bool Solve(size_t n, double sl, double sl2, double sxl, double sx, bool force_mn_nonpositive,
           double* s, double* mn) {
  const double nn = static_cast<double>(n);
  const double D = nn * sl2 - sl * sl;
  if (D <= 0) return false;
  double ss = (nn * sxl - sx * sl) / D;
  double mm = (sl2 * sx - sl * sxl) / D;
  if (force_mn_nonpositive && mm > 0) {
    mm = 0;
    ss = sl2 > 0 ? sxl / sl2 : 0;
  }
  if (!(ss > 0)) return false;
  *s = ss;
  *mn = mm;
  return true;
}

}  // namespace

bool FitLinear(const float* x, const float* L, size_t n, bool force_mn_nonpositive, float* s,
               float* mn) {
  double sl, sl2, sxl, sx, sxx, ss, mm;
  CodeSums(x, L, n, &sl, &sl2, &sxl);
  Moments(x, n, &sx, &sxx);
  if (!Solve(n, sl, sl2, sxl, sx, force_mn_nonpositive, &ss, &mm)) return false;
  *s = static_cast<float>(ss);
  *mn = static_cast<float>(mm);
  return true;
}

bool FitLinearResidual(const float* x, const float* L, size_t n, double sx, double sxx, double* s,
                       double* mn, double* residual) {
  double sl, sl2, sxl, ss, mm;
  CodeSums(x, L, n, &sl, &sl2, &sxl);
  if (!Solve(n, sl, sl2, sxl, sx, /*force_mn_nonpositive=*/true, &ss, &mm)) return false;
  *s = ss;
  *mn = mm;
  const double nn = static_cast<double>(n);
  // sum (x - ss * L - mm)^2 expanded: the fit's error with these codes, an upper bound of its
  // error with the nearest codes (which GroupSse measures).
  *residual = sxx - 2 * ss * sxl - 2 * mm * sx + ss * ss * sl2 + 2 * ss * mm * sl + nn * mm * mm;
  return true;
}

void SearchAsymGroups(const float* x, size_t n, size_t count, const float* mn, const float* mx,
                      float qmax, float* scale, float* offset) {
  std::vector<float> L(n);
  for (size_t j = 0; j < count; ++j) {
    const float* xg = x + j * n;
    const float lo = std::min(mn[j], 0.0f) + 0.0f;  // + 0.0f: -0 -> +0
    const float hi = std::max(mx[j], 0.0f);
    float s = (hi - lo) / qmax, m = -lo;
    double best = GroupSse(xg, n, s, m, qmax);
    const float range = mx[j] - lo;
    if (range > 0) {
      double sx, sxx;
      Moments(xg, n, &sx, &sxx);
      // The kSearchTop lowest residuals, lowest first (earlier step first on ties).
      double top_r[kSearchTop], top_s[kSearchTop], top_m[kSearchTop];
      for (int t = 0; t < kSearchTop; ++t) top_r[t] = top_s[t] = top_m[t] = 0;
      int found = 0;
      for (int is = 0; is <= kSteps; is += kSearchStride) {
        const float iscale = (qmax + kRMin + kRDelta * static_cast<float>(is)) / range;
        for (size_t i = 0; i < n; ++i) L[i] = ClampRound(iscale * (xg[i] - lo), qmax);
        double cs, cmn, r;
        // (A residual that is not finite - weights near float's limit - ranks nowhere.)
        if (!FitLinearResidual(xg, L.data(), n, sx, sxx, &cs, &cmn, &r) || !(r < HUGE_VAL)) {
          continue;
        }
        int at = found;
        while (at > 0 && r < top_r[at - 1]) --at;
        if (at >= kSearchTop) continue;
        for (int t = std::min(found, kSearchTop - 1); t > at; --t) {
          top_r[t] = top_r[t - 1];
          top_s[t] = top_s[t - 1];
          top_m[t] = top_m[t - 1];
        }
        top_r[at] = r;
        top_s[at] = cs;
        top_m[at] = cmn;
        found = std::min(found + 1, kSearchTop);
      }
      auto consider = [&](float cs, float cm) {
        const double e = GroupSse(xg, n, cs, cm, qmax);
        if (e < best) {
          best = e;
          s = cs;
          m = cm;
        }
      };
      for (int t = 0; t < found; ++t) {
        consider(static_cast<float>(top_s[t]), -static_cast<float>(top_m[t]));
      }
      // Refinement: the winner's own nearest codes, refitted (Lloyd steps).
      for (int it = 0; it < kSearchRefits; ++it) {
        const float inv = s > 0.0f ? 1.0f / s : 0.0f;
        for (size_t i = 0; i < n; ++i) L[i] = ClampRound((xg[i] + m) * inv, qmax);
        double cs, cmn, r;
        if (!FitLinearResidual(xg, L.data(), n, sx, sxx, &cs, &cmn, &r)) continue;
        consider(static_cast<float>(cs), -static_cast<float>(cmn));
      }
    }
    scale[j] = s;
    offset[j] = m;
  }
}

void CodedNeighbours(const float* x, size_t n, size_t count, const int* ls0, const int* lm0,
                     const CodedGrid& grid, uint8_t* ls, uint8_t* lm) {
  for (size_t j = 0; j < count; ++j) {
    double best = HUGE_VAL;
    int best_a = 0, best_b = 0;
    for (int a = -1; a <= 1; ++a) {
      for (int b = -1; b <= 1; ++b) {
        const int cls = ls0[j] + a, clm = lm0[j] + b;
        if ((grid.sym && b != 0) || cls < 0 || cls > grid.cmax || clm < 0 || clm > grid.cmax) {
          continue;
        }
        const float sc = grid.d * static_cast<float>(cls);
        const float off = grid.sym ? sc * grid.bias : grid.dmin * static_cast<float>(clm);
        const double e = GroupSse(x + j * n, n, sc, off, grid.qmax);
        if (e < best) {
          best = e;
          best_a = a;
          best_b = b;
        }
      }
    }
    ls[j] = static_cast<uint8_t>(ls0[j] + best_a);
    if (!grid.sym) lm[j] = static_cast<uint8_t>(lm0[j] + best_b);
  }
}

float StoreScale(float s, bool f16, bool up, uint16_t* bits) {
  if (!f16) return s;
  uint16_t h = F32ToF16Bits(s);
  if (up && F16BitsToF32(h) < s && h < 0x7c00u) ++h;
  *bits = h;
  return F16BitsToF32(h);
}

void SearchSymGroups(const float* x, size_t n, size_t count, const float* mn, const float* mx,
                     const SymSearch& p, float* scale, uint16_t* bits) {
  const float bias = p.bias, qmax = 2.0f * bias - 1.0f;
  std::vector<float> L(n);
  for (size_t j = 0; j < count; ++j) {
    const float* xg = x + j * n;
    double best = HUGE_VAL;
    float best_s = 0;
    uint16_t best_bits = 0;
    auto keeps = [&](float s) {
      return !p.keep_extremes || (mx[j] <= (bias - 0.5f) * s && -mn[j] <= (bias + 0.5f) * s);
    };
    auto consider = [&](float s, uint16_t b) {
      const double e = GroupSse(xg, n, s, s * bias, qmax);
      if (e < best) {
        best = e;
        best_s = s;
        best_bits = b;
      }
    };
    const float amax = std::max(std::fabs(mn[j]), std::fabs(mx[j]));
    uint16_t b = 0;
    const float s0 = StoreScale(amax / (bias - 1.0f), p.f16, /*up=*/true, &b);
    consider(s0, b);
    if (p.keep_extremes && -mn[j] >= mx[j]) {
      const float se = StoreScale(amax / bias, p.f16, /*up=*/true, &b);
      if (keeps(se)) consider(se, b);
    }
    if (amax > 0) {
      for (int is = 0; is <= kSteps; ++is) {
        const float t = (bias - 1.0f) + 1.5f * static_cast<float>(is) / kSteps;
        const float inv = 1.0f / (amax / t);
        double sxl = 0, sl2 = 0;
        for (size_t i = 0; i < n; ++i) {
          L[i] = ClampRound(xg[i] * inv + bias, qmax) - bias;
          sxl += static_cast<double>(L[i]) * xg[i];
          sl2 += static_cast<double>(L[i]) * L[i];
        }
        if (!(sl2 > 0 && sxl > 0)) continue;
        const float ss = StoreScale(static_cast<float>(sxl / sl2), p.f16, /*up=*/false, &b);
        if (keeps(ss)) consider(ss, b);
      }
    }
    scale[j] = best_s;
    if (p.f16) bits[j] = best_bits;
  }
}

}  // namespace arrowquant::kernels::ref
