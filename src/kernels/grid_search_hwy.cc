// SIMD version of kernels/grid_search.h: a batch of groups, one per lane. Within a lane every
// operation is the reference's (the same float operations in the same order, the partial sums
// k = i mod 8 kept apart, the double combination done per lane as the reference does it), so
// the result does not depend on the vector width.
#include <algorithm>
#include <cstring>
#include <memory>
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
// ClampRound of a v that is >= 0, -0 or NaN, where the clamp at 0 changes nothing: it returns
// v for all three, and -0 rounds to +0 either way.
HWY_INLINE VF ClampRoundNonNeg(DF d, VF v, VF qmax) {
  const VF magic = hn::Set(d, 12582912.0f);
  return hn::Sub(hn::Add(MinOf(v, qmax), magic), magic);
}

#if HWY_TARGET == HWY_SCALAR
// One lane: the reference itself.
constexpr bool kBatched = false;
void BatchSse(DF, const float*, size_t, VF, VF, VF, double*) {}
#else
constexpr bool kBatched = true;
using DD = hn::Repartition<double, DF>;  // half as many double lanes
using VD = hn::Vec<DD>;
using DH = hn::Half<DF>;

// The lower and upper halves of a float vector as doubles.
HWY_INLINE VD Lo(VF v) {
  return hn::PromoteTo(DD(), hn::LowerHalf(DH(), v));
}
HWY_INLINE VD Hi(VF v) {
  return hn::PromoteTo(DD(), hn::UpperHalf(DH(), v));
}
// Two double vectors back to one float vector (round to nearest, as static_cast<float>).
HWY_INLINE VF ToFloat(VD lo, VD hi) {
  return hn::Combine(DF(), hn::DemoteTo(DH(), hi), hn::DemoteTo(DH(), lo));
}
// A double-lane mask as a float-lane mask (lanes 0 .. N/2 - 1 from lo).
HWY_INLINE hn::Mask<DF> ToFloatMask(hn::Mask<DD> lo, hn::Mask<DD> hi) {
  const VD one = hn::Set(DD(), 1.0);
  return hn::Gt(ToFloat(hn::IfThenElseZero(lo, one), hn::IfThenElseZero(hi, one)), hn::Zero(DF()));
}

// GroupSse of each lane's group at its own (scale, offset): xt holds the batch transposed
// (value i of lane l at xt[i * N + l]). The sums per lane in (lo, hi) halves.
void BatchSse(DF d, const float* xt, size_t n, VF scale, VF offset, VF qmax, VD* out_lo,
              VD* out_hi) {
  const size_t N = hn::Lanes(d);
  const VF inv =
      hn::IfThenElse(hn::Gt(scale, hn::Zero(d)), hn::Div(hn::Set(d, 1.0f), scale), hn::Zero(d));
  const size_t whole = n / kParts * kParts;
  VD lo = hn::Zero(DD()), hi = lo;
  for (size_t i = whole; i < n; ++i) {  // the reference adds the rest first
    const VF x = hn::Load(d, xt + i * N);
    const VF q = ClampRound(d, hn::Mul(hn::Add(x, offset), inv), qmax);
    const VF e = hn::Sub(hn::Sub(hn::Mul(q, scale), offset), x);
    lo = hn::Add(lo, hn::Mul(Lo(e), Lo(e)));
    hi = hn::Add(hi, hn::Mul(Hi(e), Hi(e)));
  }
  for (size_t k = 0; k < kParts; ++k) {
    VF acc = hn::Zero(d);
    for (size_t i = k; i < whole; i += kParts) {
      const VF x = hn::Load(d, xt + i * N);
      const VF q = ClampRound(d, hn::Mul(hn::Add(x, offset), inv), qmax);
      const VF e = hn::Sub(hn::Sub(hn::Mul(q, scale), offset), x);
      acc = hn::Add(acc, hn::Mul(e, e));
    }
    lo = hn::Add(lo, Lo(acc));
    hi = hn::Add(hi, Hi(acc));
  }
  *out_lo = lo;
  *out_hi = hi;
}

void BatchSse(DF d, const float* xt, size_t n, VF scale, VF offset, VF qmax, double* sse) {
  VD lo, hi;
  BatchSse(d, xt, n, scale, offset, qmax, &lo, &hi);
  hn::StoreU(lo, DD(), sse);
  hn::StoreU(hi, DD(), sse + hn::Lanes(DD()));
}
#endif

// Aligned scratch of at least `floats` values for this thread.
float* Scratch(size_t floats) {
  thread_local std::vector<float> buf;
  buf.resize(floats + kAlign / sizeof(float));
  void* p = buf.data();
  size_t space = buf.size() * sizeof(float);
  return static_cast<float*>(std::align(kAlign, floats * sizeof(float), p, space));
}

// Groups j0 .. j0 + N - 1 (n values each, from x) transposed: value i of lane l at xt[i * N + l].
void Transpose(const float* x, size_t n, size_t j0, size_t N, float* xt) {
  for (size_t l = 0; l < N; ++l) {
    const float* src = x + (j0 + l) * n;
    for (size_t i = 0; i < n; ++i) xt[i * N + l] = src[i];
  }
}

}  // namespace

void GroupSseCandidatesImpl(const float* HWY_RESTRICT x, size_t n, size_t count, size_t cands,
                            const float* HWY_RESTRICT scale, const float* HWY_RESTRICT offset,
                            float qmax, double* HWY_RESTRICT sse) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const size_t batched = kBatched && N > 1 ? count / N * N : 0;
  float* xt = Scratch(n * N);
  const VF vq = hn::Set(d, qmax);
  for (size_t j0 = 0; j0 < batched; j0 += N) {
    Transpose(x, n, j0, N, xt);
    for (size_t c = 0; c < cands; ++c) {
      const size_t k = c * count + j0;
      BatchSse(d, xt, n, hn::LoadU(d, scale + k), hn::LoadU(d, offset + k), vq, sse + k);
    }
  }
  for (size_t c = 0; c < cands && batched < count; ++c) {
    for (size_t j = batched; j < count; ++j) {
      const size_t k = c * count + j;
      sse[k] = ref::GroupSse(x + j * n, n, scale[k], offset[k], qmax);
    }
  }
}

void SearchAsymGroupsImpl(const float* HWY_RESTRICT x, size_t n, size_t count,
                          const float* HWY_RESTRICT mn, const float* HWY_RESTRICT mx, float qmax,
                          float* HWY_RESTRICT scale, float* HWY_RESTRICT offset) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const size_t batched = kBatched && N > 1 ? count / N * N : 0;
#if HWY_TARGET != HWY_SCALAR
  const DD dd;
  float* xt = Scratch(2 * n * N);
  float* xs = xt + n * N;  // x - lo, transposed as xt
  const VF vq = hn::Set(d, qmax);
  const VD vn = hn::Set(dd, static_cast<double>(n));
  const size_t whole = n / kParts * kParts;
  for (size_t j0 = 0; j0 < batched; j0 += N) {
    Transpose(x, n, j0, N, xt);
    const VF vmn = hn::LoadU(d, mn + j0), vmx = hn::LoadU(d, mx + j0);
    // lo = std::min(mn, 0) + 0; hi = std::max(mx, 0).
    const VF lo = hn::Add(MinOf(vmn, hn::Zero(d)), hn::Zero(d));
    const VF hi = MaxZero(d, vmx);
    VF s = hn::Div(hn::Sub(hi, lo), vq);
    VF m = hn::Neg(lo);
    VD best_lo, best_hi;
    BatchSse(d, xt, n, s, m, vq, &best_lo, &best_hi);
    for (size_t i = 0; i < n; ++i) {
      hn::Store(hn::Sub(hn::Load(d, xt + i * N), lo), d, xs + i * N);
    }
    // FitLinear's sum of x is the same for every candidate: the rest first, then the partial
    // sums k = 0..7, as the reference adds them.
    VD e0 = hn::Zero(dd), e1 = e0;
    for (size_t i = whole; i < n; ++i) {
      const VF v = hn::Load(d, xt + i * N);
      e0 = hn::Add(e0, Lo(v));
      e1 = hn::Add(e1, Hi(v));
    }
    for (size_t k = 0; k < kParts; ++k) {
      VF ax = hn::Zero(d);
      for (size_t i = k; i < whole; i += kParts) ax = hn::Add(ax, hn::Load(d, xt + i * N));
      e0 = hn::Add(e0, Lo(ax));
      e1 = hn::Add(e1, Hi(ax));
    }
    const VF range = hn::Sub(vmx, lo);
    const auto has_range = hn::Gt(range, hn::Zero(d));
    const auto range_lo = hn::Gt(Lo(range), hn::Zero(dd));
    const auto range_hi = hn::Gt(Hi(range), hn::Zero(dd));
    for (int is = 0; !hn::AllFalse(d, has_range) && is <= kSteps; ++is) {
      const VF iscale = hn::Div(hn::Set(d, qmax + kRMin + kRDelta * static_cast<float>(is)), range);
      // FitLinear's sums in double, per half: the rest first, then the partial sums k = 0..7
      // (each over i = k, k + 8, ... in float), as the reference adds them.
      // (x - lo >= 0, so the codes need no clamp at 0.)
      VD a0 = hn::Zero(dd), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0;
      for (size_t i = whole; i < n; ++i) {
        const VF v = hn::Load(d, xt + i * N);
        const VF L = ClampRoundNonNeg(d, hn::Mul(iscale, hn::Load(d, xs + i * N)), vq);
        a0 = hn::Add(a0, Lo(L));
        a1 = hn::Add(a1, Hi(L));
        b0 = hn::Add(b0, hn::Mul(Lo(L), Lo(L)));
        b1 = hn::Add(b1, hn::Mul(Hi(L), Hi(L)));
        c0 = hn::Add(c0, hn::Mul(Lo(L), Lo(v)));
        c1 = hn::Add(c1, hn::Mul(Hi(L), Hi(v)));
      }
      for (size_t k = 0; k < kParts; ++k) {
        VF al = hn::Zero(d), al2 = al, axl = al;
        for (size_t i = k; i < whole; i += kParts) {
          const VF v = hn::Load(d, xt + i * N);
          const VF L = ClampRoundNonNeg(d, hn::Mul(iscale, hn::Load(d, xs + i * N)), vq);
          al = hn::Add(al, L);
          al2 = hn::Add(al2, hn::Mul(L, L));
          axl = hn::Add(axl, hn::Mul(v, L));
        }
        a0 = hn::Add(a0, Lo(al));
        a1 = hn::Add(a1, Hi(al));
        b0 = hn::Add(b0, Lo(al2));
        b1 = hn::Add(b1, Hi(al2));
        c0 = hn::Add(c0, Lo(axl));
        c1 = hn::Add(c1, Hi(axl));
      }
      // FitLinear's solve (force_mn_nonpositive), lane by lane in double vectors.
      auto solve = [&](VD A, VD B, VD C, VD E, hn::Mask<DD> has, VD* ss_out, VD* mm_out) {
        const VD D = hn::Sub(hn::Mul(vn, B), hn::Mul(A, A));
        VD ss = hn::Div(hn::Sub(hn::Mul(vn, C), hn::Mul(E, A)), D);
        VD mm = hn::Div(hn::Sub(hn::Mul(B, E), hn::Mul(A, C)), D);
        const auto clamp = hn::Gt(mm, hn::Zero(dd));
        const VD refit = hn::IfThenElse(hn::Gt(B, hn::Zero(dd)), hn::Div(C, B), hn::Zero(dd));
        ss = hn::IfThenElse(clamp, refit, ss);
        mm = hn::IfThenElse(clamp, hn::Zero(dd), mm);
        *ss_out = ss;
        *mm_out = mm;
        // !(D <= 0) and ss > 0, on groups with a range.
        return hn::And(has, hn::And(hn::Not(hn::Le(D, hn::Zero(dd))), hn::Gt(ss, hn::Zero(dd))));
      };
      VD ss0, mm0, ss1, mm1;
      const auto ok0 = solve(a0, b0, c0, e0, range_lo, &ss0, &mm0);
      const auto ok1 = solve(a1, b1, c1, e1, range_hi, &ss1, &mm1);
      const auto ok = ToFloatMask(ok0, ok1);
      // Lanes without a candidate are scored at a valid grid and their score ignored.
      const VF cs = hn::IfThenElse(ok, ToFloat(ss0, ss1), hn::Set(d, 1.0f));
      const VF cm = hn::IfThenElse(ok, hn::Neg(ToFloat(mm0, mm1)), hn::Zero(d));
      VD sse0, sse1;
      BatchSse(d, xt, n, cs, cm, vq, &sse0, &sse1);
      const auto win0 = hn::And(ok0, hn::Lt(sse0, best_lo));
      const auto win1 = hn::And(ok1, hn::Lt(sse1, best_hi));
      best_lo = hn::IfThenElse(win0, sse0, best_lo);
      best_hi = hn::IfThenElse(win1, sse1, best_hi);
      const auto win = ToFloatMask(win0, win1);
      s = hn::IfThenElse(win, cs, s);
      m = hn::IfThenElse(win, cm, m);
    }
    hn::StoreU(s, d, scale + j0);
    hn::StoreU(m, d, offset + j0);
  }
#endif
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
HWY_EXPORT(GroupSseCandidatesImpl);

void GroupSseCandidates(const float* x, size_t n, size_t count, size_t cands, const float* scale,
                        const float* offset, float qmax, double* sse) {
  HWY_DYNAMIC_DISPATCH(GroupSseCandidatesImpl)(x, n, count, cands, scale, offset, qmax, sse);
}

void SearchAsymGroups(const float* x, size_t n, size_t count, const float* mn, const float* mx,
                      float qmax, float* scale, float* offset) {
  HWY_DYNAMIC_DISPATCH(SearchAsymGroupsImpl)(x, n, count, mn, mx, qmax, scale, offset);
}

}  // namespace arrowquant::kernels
#endif  // HWY_ONCE
