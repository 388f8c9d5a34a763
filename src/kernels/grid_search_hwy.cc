// SIMD version of kernels/grid_search.h: a batch of groups, one per lane. Within a lane every
// operation is the reference's (the same float operations in the same order, the partial sums
// k = i mod 8 kept apart, the double combination done per lane as the reference does it), so
// the result does not depend on the vector width.
#include <algorithm>
#include <cstring>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/grid_search_hwy.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/grid_search.h"

HWY_BEFORE_NAMESPACE();
namespace arrowquant::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

namespace {

constexpr size_t kParts = 8;   // the reference's partial sums (k = i mod 8)
constexpr size_t kAlign = 64;  // bytes: enough for any x86 vector
constexpr int kSteps = kSearchSteps;
constexpr float kRMin = kSearchRMin;
constexpr float kRDelta = kSearchRDelta;

using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// std::max(v, 0) and std::min(v, q) exactly: (v < 0) ? 0 : v and (q < v) ? q : v.
HWY_INLINE VF MaxZero(DF d, VF v) {
  return hn::IfThenElse(hn::Lt(v, hn::Zero(d)), hn::Zero(d), v);
}
HWY_INLINE VF MinOf(VF v, VF q) {
  return hn::IfThenElse(hn::Lt(q, v), q, v);
}
HWY_INLINE VF ClampRound(DF d, VF v, VF qmax) {
  const VF magic = hn::Set(d, 12582912.0f);  // 1.5 * 2^23, as kernels/round.h
  return hn::Sub(hn::Add(MinOf(MaxZero(d, v), qmax), magic), magic);
}

// GroupSse of each lane's group at its own (scale, offset): xt holds the batch transposed
// (value i of lane l at xt[i * N + l]). Results per lane in `sse`.
void BatchSse(DF d, const float* xt, size_t n, VF scale, VF offset, VF qmax, double* sse) {
  const size_t N = hn::Lanes(d);
  const VF inv =
      hn::IfThenElse(hn::Gt(scale, hn::Zero(d)), hn::Div(hn::Set(d, 1.0f), scale), hn::Zero(d));
  const size_t whole = n / kParts * kParts;
  HWY_ALIGN float part[kParts][hn::MaxLanes(d)];
  for (size_t k = 0; k < kParts; ++k) {
    VF acc = hn::Zero(d);
    for (size_t i = k; i < whole; i += kParts) {
      const VF x = hn::Load(d, xt + i * N);
      const VF q = ClampRound(d, hn::Mul(hn::Add(x, offset), inv), qmax);
      const VF e = hn::Sub(hn::Sub(hn::Mul(q, scale), offset), x);
      acc = hn::Add(acc, hn::Mul(e, e));
    }
    hn::Store(acc, d, part[k]);
  }
  HWY_ALIGN float tail[hn::MaxLanes(d)];
  for (size_t l = 0; l < N; ++l) sse[l] = 0;
  for (size_t i = whole; i < n; ++i) {
    const VF x = hn::Load(d, xt + i * N);
    const VF q = ClampRound(d, hn::Mul(hn::Add(x, offset), inv), qmax);
    const VF e = hn::Sub(hn::Sub(hn::Mul(q, scale), offset), x);
    hn::Store(e, d, tail);
    for (size_t l = 0; l < N; ++l) sse[l] += static_cast<double>(tail[l]) * tail[l];
  }
  for (size_t k = 0; k < kParts; ++k) {
    for (size_t l = 0; l < N; ++l) sse[l] += part[k][l];
  }
}

}  // namespace

void SearchAsymGroupsImpl(const float* HWY_RESTRICT x, size_t n, size_t count,
                          const float* HWY_RESTRICT mn, const float* HWY_RESTRICT mx, float qmax,
                          float* HWY_RESTRICT scale, float* HWY_RESTRICT offset) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const size_t batched = N > 1 ? count / N * N : 0;
  thread_local std::vector<float> xt_buf;
  xt_buf.resize(n * N + kAlign / sizeof(float));
  // Aligned starts inside the buffers.
  auto align = [&](std::vector<float>& b) {
    const auto p = reinterpret_cast<uintptr_t>(b.data());
    const uintptr_t a = kAlign;
    return reinterpret_cast<float*>((p + a - 1) / a * a);
  };
  float* xt = align(xt_buf);
  const VF vq = hn::Set(d, qmax);
  const size_t whole = n / kParts * kParts;
  HWY_ALIGN float tmp[hn::MaxLanes(d)];
  HWY_ALIGN float pl[kParts][hn::MaxLanes(d)], pl2[kParts][hn::MaxLanes(d)],
      pxl[kParts][hn::MaxLanes(d)], px[kParts][hn::MaxLanes(d)];
  std::vector<double> best(N), sse(N), sl(N), sl2(N), sxl(N), sx(N);
  std::vector<float> s(N), m(N), cs(N), cm(N);
  std::vector<uint8_t> ok(N);
  for (size_t j0 = 0; j0 < batched; j0 += N) {
    for (size_t l = 0; l < N; ++l) {
      const float* src = x + (j0 + l) * n;
      for (size_t i = 0; i < n; ++i) xt[i * N + l] = src[i];
    }
    const VF vmn = hn::LoadU(d, mn + j0), vmx = hn::LoadU(d, mx + j0);
    // lo = std::min(mn, 0) + 0; hi = std::max(mx, 0).
    const VF lo = hn::Add(MinOf(vmn, hn::Zero(d)), hn::Zero(d));
    const VF hi = MaxZero(d, vmx);
    VF vs = hn::Div(hn::Sub(hi, lo), vq);
    VF vm = hn::Neg(lo);
    BatchSse(d, xt, n, vs, vm, vq, best.data());
    hn::StoreU(vs, d, s.data());
    hn::StoreU(vm, d, m.data());
    const VF range = hn::Sub(vmx, lo);
    const bool any = !hn::AllFalse(d, hn::Gt(range, hn::Zero(d)));
    for (int is = 0; any && is <= kSteps; ++is) {
      const VF iscale = hn::Div(hn::Set(d, qmax + kRMin + kRDelta * static_cast<float>(is)), range);
      // Codes and their least-squares sums, partial sum k over i = k, k + 8, ...
      for (size_t k = 0; k < kParts; ++k) {
        VF al = hn::Zero(d), al2 = al, axl = al, ax = al;
        for (size_t i = k; i < whole; i += kParts) {
          const VF v = hn::Load(d, xt + i * N);
          const VF L = ClampRound(d, hn::Mul(iscale, hn::Sub(v, lo)), vq);
          al = hn::Add(al, L);
          al2 = hn::Add(al2, hn::Mul(L, L));
          axl = hn::Add(axl, hn::Mul(v, L));
          ax = hn::Add(ax, v);
        }
        hn::Store(al, d, pl[k]);
        hn::Store(al2, d, pl2[k]);
        hn::Store(axl, d, pxl[k]);
        hn::Store(ax, d, px[k]);
      }
      std::fill(sl.begin(), sl.end(), 0.0);
      std::fill(sl2.begin(), sl2.end(), 0.0);
      std::fill(sxl.begin(), sxl.end(), 0.0);
      std::fill(sx.begin(), sx.end(), 0.0);
      for (size_t i = whole; i < n; ++i) {
        const VF v = hn::Load(d, xt + i * N);
        const VF L = ClampRound(d, hn::Mul(iscale, hn::Sub(v, lo)), vq);
        hn::Store(L, d, tmp);
        for (size_t l = 0; l < N; ++l) {
          const float xv = xt[i * N + l];
          sl[l] += tmp[l];
          sl2[l] += static_cast<double>(tmp[l]) * tmp[l];
          sxl[l] += static_cast<double>(tmp[l]) * xv;
          sx[l] += xv;
        }
      }
      HWY_ALIGN float rng[hn::MaxLanes(d)];
      hn::Store(range, d, rng);
      for (size_t l = 0; l < N; ++l) {
        ok[l] = 0;
        if (!(rng[l] > 0)) continue;
        double a = sl[l], b = sl2[l], c = sxl[l], e = sx[l];
        for (size_t k = 0; k < kParts; ++k) {
          a += pl[k][l];
          b += pl2[k][l];
          c += pxl[k][l];
          e += px[k][l];
        }
        const double D = static_cast<double>(n) * b - a * a;
        if (D <= 0) continue;
        double ss = (static_cast<double>(n) * c - e * a) / D;
        double mm = (b * e - a * c) / D;
        if (mm > 0) {
          mm = 0;
          ss = b > 0 ? c / b : 0;
        }
        if (!(ss > 0)) continue;
        cs[l] = static_cast<float>(ss);
        cm[l] = -static_cast<float>(mm);
        ok[l] = 1;
      }
      // Lanes without a candidate are scored at a valid one and their score ignored.
      for (size_t l = 0; l < N; ++l) {
        if (!ok[l]) cs[l] = 1.0f, cm[l] = 0.0f;
      }
      BatchSse(d, xt, n, hn::LoadU(d, cs.data()), hn::LoadU(d, cm.data()), vq, sse.data());
      for (size_t l = 0; l < N; ++l) {
        if (ok[l] && sse[l] < best[l]) {
          best[l] = sse[l];
          s[l] = cs[l];
          m[l] = cm[l];
        }
      }
    }
    std::memcpy(scale + j0, s.data(), N * sizeof(float));
    std::memcpy(offset + j0, m.data(), N * sizeof(float));
  }
  if (batched < count) {
    ref::SearchAsymGroups(x + batched * n, n, count - batched, mn + batched, mx + batched, qmax,
                          scale + batched, offset + batched);
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace arrowquant::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace arrowquant::kernels {

HWY_EXPORT(SearchAsymGroupsImpl);

void SearchAsymGroups(const float* x, size_t n, size_t count, const float* mn, const float* mx,
                      float qmax, float* scale, float* offset) {
  HWY_DYNAMIC_DISPATCH(SearchAsymGroupsImpl)(x, n, count, mn, mx, qmax, scale, offset);
}

}  // namespace arrowquant::kernels
#endif  // HWY_ONCE
