#include <algorithm>
#include <vector>

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

bool FitLinear(const float* x, const float* L, size_t n, bool force_mn_nonpositive, float* s,
               float* mn) {
  // Codes are small integers, so the code sums are exact in float.
  constexpr size_t kLanes = 8;
  float pl[kLanes] = {}, pl2[kLanes] = {}, pxl[kLanes] = {}, px[kLanes] = {};
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t k = 0; k < kLanes; ++k) {
      const float l = L[i + k], v = x[i + k];
      pl[k] += l;
      pl2[k] += l * l;
      pxl[k] += v * l;
      px[k] += v;
    }
  }
  double sl = 0, sl2 = 0, sxl = 0, sx = 0;
  for (; i < n; ++i) {
    sl += L[i];
    sl2 += static_cast<double>(L[i]) * L[i];
    sxl += static_cast<double>(L[i]) * x[i];
    sx += x[i];
  }
  for (size_t k = 0; k < kLanes; ++k) {
    sl += pl[k];
    sl2 += pl2[k];
    sxl += pxl[k];
    sx += px[k];
  }
  const double D = static_cast<double>(n) * sl2 - sl * sl;
  if (D <= 0) return false;
  double ss = (static_cast<double>(n) * sxl - sx * sl) / D;
  double mm = (sl2 * sx - sl * sxl) / D;
  if (force_mn_nonpositive && mm > 0) {
    mm = 0;
    ss = sl2 > 0 ? sxl / sl2 : 0;
  }
  if (!(ss > 0)) return false;
  *s = static_cast<float>(ss);
  *mn = static_cast<float>(mm);
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
      for (int is = 0; is <= kSteps; ++is) {
        const float iscale = (qmax + kRMin + kRDelta * static_cast<float>(is)) / range;
        for (size_t i = 0; i < n; ++i) L[i] = ClampRound(iscale * (xg[i] - lo), qmax);
        float cs, cmn;
        if (!FitLinear(xg, L.data(), n, /*force_mn_nonpositive=*/true, &cs, &cmn)) continue;
        const double e = GroupSse(xg, n, cs, -cmn, qmax);
        if (e < best) {
          best = e;
          s = cs;
          m = -cmn;
        }
      }
    }
    scale[j] = s;
    offset[j] = m;
  }
}

void GroupSseCandidates(const float* x, size_t n, size_t count, size_t cands, const float* scale,
                        const float* offset, float qmax, double* sse) {
  for (size_t c = 0; c < cands; ++c) {
    for (size_t j = 0; j < count; ++j) {
      const size_t k = c * count + j;
      sse[k] = GroupSse(x + j * n, n, scale[k], offset[k], qmax);
    }
  }
}

}  // namespace arrowquant::kernels::ref
