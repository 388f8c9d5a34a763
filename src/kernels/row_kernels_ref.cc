#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/pack.h"

#include "kernels/round.h"
#include "kernels/row_kernels.h"

namespace arrowquant::kernels::ref {

void GroupMinMax(const float* x, size_t n, size_t g, float* mn, float* mx) {
  for (size_t start = 0, gi = 0; start < n; start += g, ++gi) {
    const size_t end = std::min(n, start + g);
    float lo = x[start], hi = x[start];
    for (size_t i = start + 1; i < end; ++i) {
      lo = std::min(lo, x[i]);
      hi = std::max(hi, x[i]);
    }
    mn[gi] = lo;
    mx[gi] = hi;
  }
}

void QuantizeGroups(const float* x, size_t n, size_t g, const float* inv_scale, const float* offset,
                    float qmax, uint8_t* codes) {
  for (size_t start = 0, gi = 0; start < n; start += g, ++gi) {
    const size_t end = std::min(n, start + g);
    const float inv = inv_scale[gi], off = offset[gi];
    for (size_t i = start; i < end; ++i) {
      codes[i] = static_cast<uint8_t>(ClampRound((x[i] + off) * inv, qmax));
    }
  }
}

void DequantizeGroups(const uint8_t* codes, size_t n, size_t g, const float* scale,
                      const float* offset, float* out) {
  for (size_t start = 0, gi = 0; start < n; start += g, ++gi) {
    const size_t end = std::min(n, start + g);
    const float s = scale[gi], off = offset[gi];
    for (size_t i = start; i < end; ++i) {
      const float p = static_cast<float>(codes[i]) * s;
      out[i] = p - off;
    }
  }
}

size_t CountNonFinite(const float* x, size_t n) {
  size_t count = 0;
  for (size_t i = 0; i < n; ++i) count += !std::isfinite(x[i]);
  return count;
}

void ErrorSums(const float* x, const float* y, size_t n, double* out) {
  constexpr size_t kParts = 8;
  double p[4][kParts] = {};
  double mx = 0;
  size_t i = 0;
  for (; i + kParts <= n; i += kParts) {
    for (size_t k = 0; k < kParts; ++k) {
      const double a = x[i + k], b = y[i + k], e = a - b;
      p[0][k] += e * e;
      p[1][k] += a * a;
      p[2][k] += b * b;
      p[3][k] += a * b;
      mx = std::max(mx, std::fabs(e));
    }
  }
  double r[4] = {};
  for (; i < n; ++i) {
    const double a = x[i], b = y[i], e = a - b;
    r[0] += e * e;
    r[1] += a * a;
    r[2] += b * b;
    r[3] += a * b;
    mx = std::max(mx, std::fabs(e));
  }
  for (size_t q = 0; q < 4; ++q) {
    for (size_t k = 0; k < kParts; ++k) r[q] += p[q][k];
    out[q] = r[q];
  }
  out[4] = mx;
}

void F32ToF16Up(const float* x, size_t n, uint16_t* out) {
  for (size_t i = 0; i < n; ++i) {
    uint16_t h = F32ToF16Bits(x[i]);
    if (F16BitsToF32(h) < x[i] && h < 0x7c00u) ++h;
    out[i] = h;
  }
}

void FromF32(DType dtype, const float* x, size_t n, uint16_t* out) {
  if (dtype == DType::kF16) {
    for (size_t i = 0; i < n; ++i) out[i] = F32ToF16Bits(x[i]);
  } else {
    for (size_t i = 0; i < n; ++i) out[i] = F32ToBF16Bits(x[i]);
  }
}

void DequantizePacked(const uint8_t* packed, int bits, size_t n, size_t g, const float* scale,
                      const float* offset, DType dtype, void* out) {
  std::vector<uint8_t> codes(n);
  std::vector<float> f(n);
  UnpackCodes(packed, n, bits, codes.data());
  DequantizeGroups(codes.data(), n, g, scale, offset, f.data());
  if (dtype == DType::kF32) {
    std::memcpy(out, f.data(), n * 4);
    return;
  }
  std::vector<uint16_t> h(n);
  FromF32(dtype, f.data(), n, h.data());
  std::memcpy(out, h.data(), n * 2);
}

void ToF32(DType dtype, const void* src, size_t n, float* out) {
  switch (dtype) {
    case DType::kF32: std::memcpy(out, src, n * sizeof(float)); return;
    case DType::kF16: {
      const auto* h = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, h + i, 2);  // src may be unaligned (SafeTensors offsets)
        out[i] = F16BitsToF32(v);
      }
      return;
    }
    case DType::kBF16: {
      const auto* h = static_cast<const uint16_t*>(src);
      for (size_t i = 0; i < n; ++i) {
        uint16_t v;
        std::memcpy(&v, h + i, 2);
        out[i] = BF16BitsToF32(v);
      }
      return;
    }
    default: return;
  }
}

void Axpy(float a, const float* x, size_t n, float* y) {
  for (size_t k = 0; k < n; ++k) y[k] += a * x[k];
}

void LanesAxpy(const float* e, const float* u, size_t n, float* w) {
  for (size_t k = 0; k < n; ++k) {
    for (size_t l = 0; l < kRowLanes; ++l) w[k * kRowLanes + l] -= e[l] * u[k];
  }
}

void LanesDot(const double* h, const double* v, size_t n, double* t) {
  for (size_t k = 0; k < n; ++k) {
    for (size_t l = 0; l < kRowLanes; ++l) t[l] += h[k] * v[k * kRowLanes + l];
  }
}

void LanesDot4(const double* const* h, const double* v, size_t n, double* t) {
  for (size_t a = 0; a < 4; ++a) LanesDot(h[a], v, n, t + a * kRowLanes);
}

void SumOuter4(const float* xi, const float* xj, size_t stride, size_t rows, size_t len, float* out,
               size_t out_stride) {
  for (size_t a = 0; a < 4; ++a) {
    for (size_t k = 0; k < len; ++k) {
      float s = 0.0f;
      for (size_t r = 0; r < rows; ++r) s += xi[r * stride + a] * xj[r * stride + k];
      out[a * out_stride + k] = s;
    }
  }
}

}  // namespace arrowquant::kernels::ref
