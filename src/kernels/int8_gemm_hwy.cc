// SIMD versions of kernels/int8_gemm.h. The integer dot product (uint8 x int8, four products
// summed into each int32 lane) is one instruction with AVX-512 VNNI (vpdpbusd); Highway 1.0
// has no op for it, so the AVX3_DL target calls the intrinsic
// in a function of its own with the extra target feature, and every other target runs the
// scalar reference, which gives the same bits. The activation rounding is Highway on all targets.
#include <algorithm>
#include <cstring>

// AVX3_DL (Ice Lake / Zen 4 and later: VNNI among others) is compiled by the whole project
// (HWY_WANT_AVX3_DL in CMakeLists.txt).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/int8_gemm_hwy.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/int8_gemm.h"

HWY_BEFORE_NAMESPACE();
namespace arrowquant::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void QuantizeActivationsImpl(const float* HWY_RESTRICT x, size_t n, float scale, float zero,
                             uint8_t* HWY_RESTRICT codes) {
  const hn::ScalableTag<float> d;
  const hn::Rebind<int32_t, decltype(d)> di;
  const hn::Rebind<uint8_t, decltype(d)> du8;
  const size_t N = hn::Lanes(d);
  const auto vs = hn::Set(d, scale);
  const auto vz = hn::Set(d, zero);
  const auto lo = hn::Zero(d);
  const auto hi = hn::Set(d, 255.0f);
  size_t k = 0;
  for (; k + N <= n; k += N) {
    auto q = hn::Add(hn::Round(hn::Div(hn::LoadU(d, x + k), vs)), vz);
    q = hn::IfThenZeroElse(hn::IsNaN(q), q);
    q = hn::Min(hn::Max(q, lo), hi);
    hn::StoreU(hn::DemoteTo(du8, hn::ConvertTo(di, q)), du8, codes + k);
  }
  if (k < n) ref::QuantizeActivations(x + k, n - k, scale, zero, codes + k);
}

// 16 output pixels at a time: the four k of a quad loaded as four runs of 16 codes and
// interleaved byte-wise, then 16-bit-wise, into 16 rows of 4 codes.
void GatherQuadsImpl(const uint8_t* HWY_RESTRICT xp, const PatchShape& s, size_t pos0, size_t len,
                     uint8_t* HWY_RESTRICT dst, size_t plane) {
#if HWY_TARGET == HWY_SCALAR  // no 128-bit vectors
  ref::GatherQuads(xp, s, pos0, len, dst, plane);
#else
  const hn::Full128<uint8_t> d8;
  const hn::Full128<uint16_t> d16;
  const size_t taps = s.kh * s.kw, kmax = s.channels * taps;
  alignas(16) static const uint8_t kZeros[16] = {};
  for (size_t k4 = 0; k4 < s.k4s; ++k4) {
    const uint8_t* src[kQuad];
    size_t step[kQuad];  // 16 for a real tap, 0 for the zeros past K
    for (size_t j = 0; j < kQuad; ++j) {
      const size_t k = k4 * kQuad + j;
      if (k >= kmax) {
        src[j] = kZeros;
        step[j] = 0;
        continue;
      }
      const size_t c = k / taps, i = k % taps / s.kw, jj = k % s.kw;
      src[j] = xp + (c * s.hp + i * s.dil_h) * s.wp + jj * s.dil_w + pos0;
      step[j] = 16;
    }
    uint8_t* d = dst + k4 * plane;
    size_t t = 0;
    for (; t + 16 <= len; t += 16) {
      const auto a = hn::LoadU(d8, src[0] + (step[0] ? t : 0));
      const auto b = hn::LoadU(d8, src[1] + (step[1] ? t : 0));
      const auto c = hn::LoadU(d8, src[2] + (step[2] ? t : 0));
      const auto e = hn::LoadU(d8, src[3] + (step[3] ? t : 0));
      const auto ab_lo = hn::BitCast(d16, hn::InterleaveLower(d8, a, b));
      const auto ab_hi = hn::BitCast(d16, hn::InterleaveUpper(d8, a, b));
      const auto ce_lo = hn::BitCast(d16, hn::InterleaveLower(d8, c, e));
      const auto ce_hi = hn::BitCast(d16, hn::InterleaveUpper(d8, c, e));
      uint8_t* o = d + t * kQuad;
      hn::StoreU(hn::BitCast(d8, hn::InterleaveLower(d16, ab_lo, ce_lo)), d8, o);
      hn::StoreU(hn::BitCast(d8, hn::InterleaveUpper(d16, ab_lo, ce_lo)), d8, o + 16);
      hn::StoreU(hn::BitCast(d8, hn::InterleaveLower(d16, ab_hi, ce_hi)), d8, o + 32);
      hn::StoreU(hn::BitCast(d8, hn::InterleaveUpper(d16, ab_hi, ce_hi)), d8, o + 48);
    }
    for (; t < len; ++t) {
      for (size_t j = 0; j < kQuad; ++j) d[t * kQuad + j] = step[j] ? src[j][t] : 0;
    }
  }
#endif
}

#if HWY_TARGET == HWY_AVX3_DL
#define AQ_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

// MR rows times NP panels of outputs, every group, then the epilogue; `cols` of the NP * 16
// columns are stored. Accumulators stay in registers: MR * NP int32 and as many float.
template <int MR, int NP>
AQ_VNNI void MicroVnni(const uint8_t* x, size_t ms, size_t ks, const float* rsum,
                       const Int8Panels& w, size_t p0, float sx, float zx, const float* bias,
                       float* y, size_t ldy, size_t cols) {
  const size_t pstride = w.k4s * kPanel * kQuad;
  const int8_t* wp = w.w + p0 * pstride;
  __m512 fa[MR][NP];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
    for (int j = 0; j < NP; ++j) fa[r][j] = _mm512_setzero_ps();
  }
  size_t k4 = 0;
  for (size_t g = 0; g < w.groups; ++g) {
    const size_t end = std::min(w.k4s, k4 + w.group_k4);
    __m512i ia[MR][NP];
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
#pragma GCC unroll 2
      for (int j = 0; j < NP; ++j) ia[r][j] = _mm512_setzero_si512();
    }
    for (; k4 < end; ++k4) {
      __m512i wv[NP];
#pragma GCC unroll 2
      for (int j = 0; j < NP; ++j) {
        wv[j] = _mm512_loadu_si512(wp + j * pstride + k4 * kPanel * kQuad);
      }
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) {
        int32_t quad;
        std::memcpy(&quad, x + r * ms + k4 * ks, sizeof quad);
        const __m512i xb = _mm512_set1_epi32(quad);
#pragma GCC unroll 2
        for (int j = 0; j < NP; ++j) ia[r][j] = _mm512_dpbusd_epi32(ia[r][j], xb, wv[j]);
      }
    }
    __m512 sv[NP], bv[NP];
#pragma GCC unroll 2
    for (int j = 0; j < NP; ++j) {
      sv[j] = _mm512_loadu_ps(w.scale + ((p0 + j) * w.groups + g) * kPanel);
      bv[j] = _mm512_loadu_ps(w.bias_r + ((p0 + j) * w.groups + g) * kPanel);
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 rb = _mm512_set1_ps(rsum[r * w.groups + g]);
#pragma GCC unroll 2
      for (int j = 0; j < NP; ++j) {
        fa[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[r][j]), sv[j], fa[r][j]);
        fa[r][j] = _mm512_fmadd_ps(rb, bv[j], fa[r][j]);
      }
    }
  }
  const __m512 vzx = _mm512_set1_ps(zx);
  const __m512 vsx = _mm512_set1_ps(sx);
#pragma GCC unroll 2
  for (int j = 0; j < NP; ++j) {
    const size_t valid = std::min(kPanel, cols - std::min(cols, j * kPanel));
    const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
    const __m512 cv = _mm512_loadu_ps(w.col + (p0 + j) * kPanel);
    const size_t n0 = p0 * kPanel + j * kPanel;
    const __m512 bias_v = bias ? _mm512_maskz_loadu_ps(mask, bias + n0) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512 t = _mm512_fnmadd_ps(vzx, cv, fa[r][j]);
      _mm512_mask_storeu_ps(y + r * ldy + j * kPanel, mask, _mm512_fmadd_ps(t, vsx, bias_v));
    }
  }
}

template <int NP>
AQ_VNNI void RowsVnni(const uint8_t* x, size_t ms, size_t ks, const float* rsum, size_t rows,
                      const Int8Panels& w, size_t p, float sx, float zx, const float* bias,
                      float* y, size_t ldy) {
  const size_t cols = std::min(w.n - p * kPanel, NP * kPanel);
  float* yp = y + p * kPanel;
  size_t m = 0;
  constexpr size_t kRows = 6;
  for (; m + kRows <= rows; m += kRows) {
    MicroVnni<kRows, NP>(x + m * ms, ms, ks, rsum + m * w.groups, w, p, sx, zx, bias, yp + m * ldy,
                         ldy, cols);
  }
  const uint8_t* xm = x + m * ms;
  const float* rm = rsum + m * w.groups;
  float* ym = yp + m * ldy;
  switch (rows - m) {
    case 5: MicroVnni<5, NP>(xm, ms, ks, rm, w, p, sx, zx, bias, ym, ldy, cols); break;
    case 4: MicroVnni<4, NP>(xm, ms, ks, rm, w, p, sx, zx, bias, ym, ldy, cols); break;
    case 3: MicroVnni<3, NP>(xm, ms, ks, rm, w, p, sx, zx, bias, ym, ldy, cols); break;
    case 2: MicroVnni<2, NP>(xm, ms, ks, rm, w, p, sx, zx, bias, ym, ldy, cols); break;
    case 1: MicroVnni<1, NP>(xm, ms, ks, rm, w, p, sx, zx, bias, ym, ldy, cols); break;
    default: break;
  }
}
#endif  // HWY_TARGET == HWY_AVX3_DL

void Int8GemmImpl(const uint8_t* x, size_t ms, size_t ks, const float* rsum, size_t rows,
                  const Int8Panels& w, float sx, float zx, const float* bias, float* y,
                  size_t ldy) {
#if HWY_TARGET == HWY_AVX3_DL
  // Two panels (32 columns) at a time over all rows: that much of the weight stays in cache
  // while the rows stream past it.
  const size_t panels = w.panels();
  size_t p = 0;
  for (; p + 2 <= panels; p += 2) RowsVnni<2>(x, ms, ks, rsum, rows, w, p, sx, zx, bias, y, ldy);
  if (p < panels) RowsVnni<1>(x, ms, ks, rsum, rows, w, p, sx, zx, bias, y, ldy);
#else
  ref::Int8Gemm(x, ms, ks, rsum, rows, w, sx, zx, bias, y, ldy);
#endif
}

bool Int8GemmAcceleratedImpl() {
  return HWY_TARGET == HWY_AVX3_DL;
}

}  // namespace HWY_NAMESPACE
}  // namespace arrowquant::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace arrowquant::kernels {

HWY_EXPORT(QuantizeActivationsImpl);
HWY_EXPORT(Int8GemmImpl);
HWY_EXPORT(Int8GemmAcceleratedImpl);
HWY_EXPORT(GatherQuadsImpl);

void GatherQuads(const uint8_t* xp, const PatchShape& s, size_t pos0, size_t len, uint8_t* dst,
                 size_t plane) {
  HWY_DYNAMIC_DISPATCH(GatherQuadsImpl)(xp, s, pos0, len, dst, plane);
}

void QuantizeActivations(const float* x, size_t n, float scale, float zero, uint8_t* codes) {
  HWY_DYNAMIC_DISPATCH(QuantizeActivationsImpl)(x, n, scale, zero, codes);
}

void GroupSums(const uint8_t* codes, size_t n, size_t g, float* rsum) {
  ref::GroupSums(codes, n, g, rsum);  // one pass over bytes in cache; the compiler vectorizes it
}

void Int8Gemm(const uint8_t* x, size_t m_stride, size_t k4_stride, const float* rsum, size_t rows,
              const Int8Panels& w, float sx, float zx, const float* bias, float* y, size_t ldy) {
  HWY_DYNAMIC_DISPATCH(Int8GemmImpl)(x, m_stride, k4_stride, rsum, rows, w, sx, zx, bias, y, ldy);
}

bool Int8GemmAccelerated() {
  return HWY_DYNAMIC_DISPATCH(Int8GemmAcceleratedImpl)();
}

const char* Int8GemmTarget() {
  return Int8GemmAccelerated() ? "avx512-vnni" : "scalar";
}

}  // namespace arrowquant::kernels
#endif  // HWY_ONCE
