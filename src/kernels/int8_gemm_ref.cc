// The scalar spec of kernels/int8_gemm.h.
#include <algorithm>
#include <cmath>

#include "kernels/int8_gemm.h"

namespace arrowquant::kernels::ref {

void Int8Gemm(const uint8_t* x, size_t m_stride, size_t k4_stride, const float* rsum, size_t rows,
              const Int8Panels& w, float sx, float zx, const float* bias, float* y, size_t ldy) {
  for (size_t m = 0; m < rows; ++m) {
    const uint8_t* xm = x + m * m_stride;
    for (size_t n = 0; n < w.n; ++n) {
      const size_t p = n / kPanel, lane = n % kPanel;
      float acc = 0.0f;
      for (size_t g = 0, k4 = 0; g < w.groups; ++g) {
        const size_t end = std::min(w.k4s, k4 + w.group_k4);
        int32_t a = 0;
        for (; k4 < end; ++k4) {
          const int8_t* wq = w.w + ((p * w.k4s + k4) * kPanel + lane) * kQuad;
          for (size_t j = 0; j < kQuad; ++j) a += int32_t{wq[j]} * int32_t{xm[k4 * k4_stride + j]};
        }
        const size_t at = (p * w.groups + g) * kPanel + lane;
        acc = std::fma(static_cast<float>(a), w.scale[at], acc);
        acc = std::fma(rsum[m * w.groups + g], w.bias_r[at], acc);
      }
      const float t = std::fma(-zx, w.col[n], acc);
      y[m * ldy + n] = std::fma(t, sx, bias ? bias[n] : 0.0f);
    }
  }
}

void QuantizeActivations(const float* x, size_t n, float scale, float zero, uint8_t* codes) {
  for (size_t k = 0; k < n; ++k) {
    const float q = std::nearbyint(x[k] / scale) + zero;  // the FP environment rounds to even
    codes[k] = static_cast<uint8_t>(std::isnan(q) ? 0.0f : std::clamp(q, 0.0f, 255.0f));
  }
}

void GroupSums(const uint8_t* codes, size_t n, size_t g, float* rsum) {
  for (size_t start = 0, i = 0; start < n; start += g, ++i) {
    uint32_t s = 0;
    for (size_t k = start; k < std::min(n, start + g); ++k) s += codes[k];
    rsum[i] = static_cast<float>(s);
  }
}

void GatherQuads(const uint8_t* xp, const PatchShape& s, size_t pos0, size_t len, uint8_t* dst,
                 size_t plane) {
  const size_t taps = s.kh * s.kw, kmax = s.channels * taps;
  for (size_t k = 0; k < s.k4s * kQuad; ++k) {
    uint8_t* d = dst + (k / kQuad) * plane + k % kQuad;
    if (k >= kmax) {
      for (size_t t = 0; t < len; ++t) d[t * kQuad] = 0;
      continue;
    }
    const size_t c = k / taps, i = k % taps / s.kw, j = k % s.kw;
    const uint8_t* src = xp + (c * s.hp + i * s.dil_h) * s.wp + j * s.dil_w + pos0;
    for (size_t t = 0; t < len; ++t) d[t * kQuad] = src[t];
  }
}

}  // namespace arrowquant::kernels::ref
