// SIMD version of kernels/grid_search.h: a batch of groups, one per lane. Within a lane every
// operation is the reference's (the same float operations in the same order, the partial sums
// k = i mod 8 kept apart, the double combination done per lane as the reference does it), so
// the result does not depend on the vector width.
#include <algorithm>
#include <cmath>
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

// The reference's ClampRound: round to nearest even of v clamped to [0, qmax]. On x86, Max and
// Min are maxps/minps, which return their second operand on NaN or equal zeros; where they differ
// from std::max/std::min (v = -0 or NaN) the rounded code's value is the same (+-0 or NaN, and a
// code of -0 adds, multiplies and scales exactly as +0 in every sum here). One instruction each,
// where the exact (v < 0) ? 0 : v selection took two; Round is roundscale (RNE), as the
// reference's magic-number rounding for 0 <= v <= qmax < 2^22.
HWY_INLINE VF ClampRound(DF d, VF v, VF qmax) {
  return hn::Round(hn::Min(hn::Max(v, hn::Zero(d)), qmax));
}
// ClampRound of a v that is >= 0, -0 or NaN, where the clamp at 0 changes nothing.
HWY_INLINE VF ClampRoundNonNeg(VF v, VF qmax) {
  return hn::Round(hn::Min(v, qmax));
}
// std::max(v, 0) and std::min(v, q) exactly: (v < 0) ? 0 : v and (q < v) ? q : v.
HWY_INLINE VF MaxZero(DF d, VF v) {
  return hn::IfThenElse(hn::Lt(v, hn::Zero(d)), hn::Zero(d), v);
}
HWY_INLINE VF MinOf(VF v, VF q) {
  return hn::IfThenElse(hn::Lt(q, v), q, v);
}

#if HWY_TARGET == HWY_SCALAR
// One lane: the reference itself.
constexpr bool kBatched = false;
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
  // The eight partial sums side by side (independent chains), each over i = k, k + 8, ... in
  // that order, then folded k = 0..7 as the reference does.
  VF acc[kParts];
  for (size_t k = 0; k < kParts; ++k) acc[k] = hn::Zero(d);
  for (size_t i0 = 0; i0 < whole; i0 += kParts) {
    for (size_t k = 0; k < kParts; ++k) {
      const VF x = hn::Load(d, xt + (i0 + k) * N);
      const VF q = ClampRound(d, hn::Mul(hn::Add(x, offset), inv), qmax);
      const VF e = hn::Sub(hn::Sub(hn::Mul(q, scale), offset), x);
      acc[k] = hn::Add(acc[k], hn::Mul(e, e));
    }
  }
  for (size_t k = 0; k < kParts; ++k) {
    lo = hn::Add(lo, Lo(acc[k]));
    hi = hn::Add(hi, Hi(acc[k]));
  }
  *out_lo = lo;
  *out_hi = hi;
}

// Aligned scratch of at least `floats` values for this thread.
float* Scratch(size_t floats) {
  thread_local std::vector<float> buf;
  buf.resize(floats + kAlign / sizeof(float));
  void* p = buf.data();
  size_t space = buf.size() * sizeof(float);
  return static_cast<float*>(std::align(kAlign, floats * sizeof(float), p, space));
}

// Groups j0 .. j0 + valid - 1 (n values each, from x) transposed: value i of lane l at
// xt[i * N + l]. Lanes from `valid` to N - 1 repeat the last group: a short batch runs on the
// vector too (every lane is computed on its own, so the padding changes no valid lane's result)
// instead of falling back to the scalar reference, which matters for rows of fewer groups than
// lanes (16 on AVX-512: every row of 512 or fewer columns at group size 32).
void Transpose(const float* x, size_t n, size_t j0, size_t valid, size_t N, float* xt) {
  for (size_t l = 0; l < N; ++l) {
    const float* src = x + (j0 + std::min(l, valid - 1)) * n;
    for (size_t i = 0; i < n; ++i) xt[i * N + l] = src[i];
  }
}

// v[j0 .. j0 + valid) padded to N lanes with its last value, into buf.
const float* Padded(const float* v, size_t j0, size_t valid, size_t N, float* buf) {
  if (valid == N) return v + j0;
  for (size_t l = 0; l < N; ++l) buf[l] = v[j0 + std::min(l, valid - 1)];
  return buf;
}
#endif

}  // namespace

void CodedNeighboursImpl(const float* HWY_RESTRICT x, size_t n, size_t count,
                         const int* HWY_RESTRICT ls0, const int* HWY_RESTRICT lm0,
                         const CodedGrid& grid, uint8_t* HWY_RESTRICT ls,
                         uint8_t* HWY_RESTRICT lm) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const size_t batched = kBatched && N > 1 ? count : 0;
#if HWY_TARGET != HWY_SCALAR
  const DD dd;
  float* xt = Scratch(n * N + 4 * N);
  float* pad = xt + n * N;
  const VF vq = hn::Set(d, grid.qmax), vcmax = hn::Set(d, static_cast<float>(grid.cmax));
  const VF vd = hn::Set(d, grid.d), vdmin = hn::Set(d, grid.dmin), vbias = hn::Set(d, grid.bias);
  for (size_t j0 = 0; j0 < batched; j0 += N) {
    const size_t valid = std::min(N, count - j0);
    Transpose(x, n, j0, valid, N, xt);
    // The codes as floats (small integers: exact), padded like the values.
    for (size_t l = 0; l < N; ++l) {
      const size_t j = j0 + std::min(l, valid - 1);
      pad[l] = static_cast<float>(ls0[j]);
      pad[N + l] = static_cast<float>(lm0[j]);
    }
    const VF l0 = hn::LoadU(d, pad), m0 = hn::LoadU(d, pad + N);
    VD best_lo = hn::Set(dd, HUGE_VAL), best_hi = best_lo;
    VF best_a = hn::Zero(d), best_b = hn::Zero(d);
    for (int a = -1; a <= 1; ++a) {
      for (int b = -1; b <= 1; ++b) {
        if (grid.sym && b != 0) continue;
        const VF cls = hn::Add(l0, hn::Set(d, static_cast<float>(a)));
        const VF clm = hn::Add(m0, hn::Set(d, static_cast<float>(b)));
        const auto ok = hn::And(hn::And(hn::Ge(cls, hn::Zero(d)), hn::Le(cls, vcmax)),
                                hn::And(hn::Ge(clm, hn::Zero(d)), hn::Le(clm, vcmax)));
        const VF sc_k = hn::Mul(vd, cls);
        const VF off_k = grid.sym ? hn::Mul(sc_k, vbias) : hn::Mul(vdmin, clm);
        // Lanes without a candidate are scored at a valid grid and their score ignored.
        const VF sc = hn::IfThenElse(ok, sc_k, hn::Set(d, 1.0f));
        const VF off = hn::IfThenElse(ok, off_k, hn::Zero(d));
        VD sse0, sse1;
        BatchSse(d, xt, n, sc, off, vq, &sse0, &sse1);
        const VF one = hn::Set(d, 1.0f);
        const VF okf = hn::IfThenElseZero(ok, one);
        const auto ok0 = hn::Gt(Lo(okf), hn::Zero(dd)), ok1 = hn::Gt(Hi(okf), hn::Zero(dd));
        const auto win0 = hn::And(ok0, hn::Lt(sse0, best_lo));
        const auto win1 = hn::And(ok1, hn::Lt(sse1, best_hi));
        best_lo = hn::IfThenElse(win0, sse0, best_lo);
        best_hi = hn::IfThenElse(win1, sse1, best_hi);
        const auto win = ToFloatMask(win0, win1);
        best_a = hn::IfThenElse(win, hn::Set(d, static_cast<float>(a)), best_a);
        best_b = hn::IfThenElse(win, hn::Set(d, static_cast<float>(b)), best_b);
      }
    }
    hn::StoreU(hn::Add(l0, best_a), d, pad + 2 * N);
    hn::StoreU(hn::Add(m0, best_b), d, pad + 3 * N);
    for (size_t l = 0; l < valid; ++l) {
      ls[j0 + l] = static_cast<uint8_t>(pad[2 * N + l]);
      if (!grid.sym) lm[j0 + l] = static_cast<uint8_t>(pad[3 * N + l]);
    }
  }
#endif
  if (batched < count) {
    ref::CodedNeighbours(x + batched * n, n, count - batched, ls0 + batched, lm0 + batched, grid,
                         ls + batched, lm + batched);
  }
}

#if HWY_TARGET != HWY_SCALAR
namespace {

// Per-lane sums in double, as (lo, hi) halves.
struct Sums {
  VD lo, hi;
};

// A per-lane sum over the transposed batch in FitLinear's order: the rest (i >= whole) first in
// double, then the float partial sums k = 0..7 (each over i = k, k + 8, ...), kept side by side.
// term(i) gives the value's term as floats (whole chunks) and its double halves (the rest).
template <size_t kSums, class FloatTerms, class DoubleTerms>
void SumTerms(size_t n, FloatTerms&& fterms, DoubleTerms&& dterms, Sums* out) {
  const DF d;
  const DD dd;
  const size_t whole = n / kParts * kParts;
  for (size_t q = 0; q < kSums; ++q) out[q].lo = out[q].hi = hn::Zero(dd);
  for (size_t i = whole; i < n; ++i) dterms(i, out);
  VF acc[kSums][kParts];
  for (size_t q = 0; q < kSums; ++q) {
    for (size_t k = 0; k < kParts; ++k) acc[q][k] = hn::Zero(d);
  }
  for (size_t i0 = 0; i0 < whole; i0 += kParts) {
    for (size_t k = 0; k < kParts; ++k) fterms(i0 + k, acc, k);
  }
  for (size_t k = 0; k < kParts; ++k) {
    for (size_t q = 0; q < kSums; ++q) {
      out[q].lo = hn::Add(out[q].lo, Lo(acc[q][k]));
      out[q].hi = hn::Add(out[q].hi, Hi(acc[q][k]));
    }
  }
}

// FitLinearResidual's sums of the codes L(i): sum L, sum L^2, sum x L.
template <class Codes>
void CodeSums(const float* xt, size_t n, size_t N, Codes&& codes, Sums* out) {
  const DF d;
  SumTerms<3>(
      n,
      [&](size_t i, VF(*acc)[kParts], size_t k) {
        const VF v = hn::Load(d, xt + i * N);
        const VF L = codes(i);
        acc[0][k] = hn::Add(acc[0][k], L);
        acc[1][k] = hn::Add(acc[1][k], hn::Mul(L, L));
        acc[2][k] = hn::Add(acc[2][k], hn::Mul(v, L));
      },
      [&](size_t i, Sums* o) {
        const VF v = hn::Load(d, xt + i * N);
        const VF L = codes(i);
        o[0].lo = hn::Add(o[0].lo, Lo(L));
        o[0].hi = hn::Add(o[0].hi, Hi(L));
        o[1].lo = hn::Add(o[1].lo, hn::Mul(Lo(L), Lo(L)));
        o[1].hi = hn::Add(o[1].hi, hn::Mul(Hi(L), Hi(L)));
        o[2].lo = hn::Add(o[2].lo, hn::Mul(Lo(L), Lo(v)));
        o[2].hi = hn::Add(o[2].hi, hn::Mul(Hi(L), Hi(v)));
      },
      out);
}

// FitLinearResidual's solve and residual on one half: A = sum L, B = sum L^2, C = sum x L,
// E = sum x, F = sum x^2. Returns the lanes with a fit (and `has`).
hn::Mask<DD> Solve(VD vn, VD A, VD B, VD C, VD E, VD F, hn::Mask<DD> has, VD* ss_out, VD* mm_out,
                   VD* r_out) {
  const DD dd;
  const VD D = hn::Sub(hn::Mul(vn, B), hn::Mul(A, A));
  VD ss = hn::Div(hn::Sub(hn::Mul(vn, C), hn::Mul(E, A)), D);
  VD mm = hn::Div(hn::Sub(hn::Mul(B, E), hn::Mul(A, C)), D);
  const auto clamp = hn::Gt(mm, hn::Zero(dd));
  const VD refit = hn::IfThenElse(hn::Gt(B, hn::Zero(dd)), hn::Div(C, B), hn::Zero(dd));
  ss = hn::IfThenElse(clamp, refit, ss);
  mm = hn::IfThenElse(clamp, hn::Zero(dd), mm);
  const VD two = hn::Set(dd, 2.0);
  // sxx - 2 ss sxl - 2 mm sx + ss ss sl2 + 2 ss mm sl + n mm mm, left to right.
  VD r = hn::Sub(F, hn::Mul(hn::Mul(two, ss), C));
  r = hn::Sub(r, hn::Mul(hn::Mul(two, mm), E));
  r = hn::Add(r, hn::Mul(hn::Mul(ss, ss), B));
  r = hn::Add(r, hn::Mul(hn::Mul(hn::Mul(two, ss), mm), A));
  r = hn::Add(r, hn::Mul(hn::Mul(vn, mm), mm));
  *ss_out = ss;
  *mm_out = mm;
  *r_out = r;
  // !(D <= 0) and ss > 0.
  return hn::And(has, hn::And(hn::Not(hn::Le(D, hn::Zero(dd))), hn::Gt(ss, hn::Zero(dd))));
}

// The kSearchTop lowest residuals of one half, lowest first; a new one goes in after any equal.
struct Top {
  VD r[kSearchTop], s[kSearchTop], m[kSearchTop];
  void Init() {
    for (int t = 0; t < kSearchTop; ++t) {
      r[t] = hn::Set(DD(), HUGE_VAL);
      s[t] = m[t] = hn::Zero(DD());
    }
  }
  void Insert(hn::Mask<DD> ok, VD nr, VD ns, VD nm) {
    // Going from the bottom: slot t takes slot t - 1's entry where the new one goes above t - 1,
    // the new one where it goes at t.
    hn::Mask<DD> above = hn::And(ok, hn::Lt(nr, r[kSearchTop - 1]));  // lands at or above t
    for (int t = kSearchTop - 1; t >= 0; --t) {
      const hn::Mask<DD> higher = t > 0 ? hn::And(ok, hn::Lt(nr, r[t - 1])) : hn::FirstN(DD(), 0);
      const hn::Mask<DD> here = hn::AndNot(higher, above);
      if (t > 0) {
        r[t] = hn::IfThenElse(higher, r[t - 1], r[t]);
        s[t] = hn::IfThenElse(higher, s[t - 1], s[t]);
        m[t] = hn::IfThenElse(higher, m[t - 1], m[t]);
      }
      r[t] = hn::IfThenElse(here, nr, r[t]);
      s[t] = hn::IfThenElse(here, ns, s[t]);
      m[t] = hn::IfThenElse(here, nm, m[t]);
      above = higher;
    }
  }
};

}  // namespace
#endif

void SearchAsymGroupsImpl(const float* HWY_RESTRICT x, size_t n, size_t count,
                          const float* HWY_RESTRICT mn, const float* HWY_RESTRICT mx, float qmax,
                          float* HWY_RESTRICT scale, float* HWY_RESTRICT offset) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const size_t batched = kBatched && N > 1 ? count : 0;
#if HWY_TARGET != HWY_SCALAR
  const DD dd;
  float* xt = Scratch(2 * n * N + 4 * N);
  float* xs = xt + n * N;  // x - lo, transposed as xt
  float* pad = xs + n * N;
  const VF vq = hn::Set(d, qmax);
  const VD vn = hn::Set(dd, static_cast<double>(n));
  for (size_t j0 = 0; j0 < batched; j0 += N) {
    const size_t valid = std::min(N, count - j0);
    Transpose(x, n, j0, valid, N, xt);
    const VF vmn = hn::LoadU(d, Padded(mn, j0, valid, N, pad));
    const VF vmx = hn::LoadU(d, Padded(mx, j0, valid, N, pad + N));
    // lo = std::min(mn, 0) + 0; hi = std::max(mx, 0).
    const VF lo = hn::Add(MinOf(vmn, hn::Zero(d)), hn::Zero(d));
    const VF hi = MaxZero(d, vmx);
    VF s = hn::Div(hn::Sub(hi, lo), vq);
    VF m = hn::Neg(lo);
    VD best_lo, best_hi;
    BatchSse(d, xt, n, s, m, vq, &best_lo, &best_hi);
    const VF range = hn::Sub(vmx, lo);
    const auto has_range = hn::Gt(range, hn::Zero(d));
    if (!hn::AllFalse(d, has_range)) {
      const auto range_lo = hn::Gt(Lo(range), hn::Zero(dd));
      const auto range_hi = hn::Gt(Hi(range), hn::Zero(dd));
      for (size_t i = 0; i < n; ++i) {
        hn::Store(hn::Sub(hn::Load(d, xt + i * N), lo), d, xs + i * N);
      }
      // The group's sums of x and x^2 (Moments), the same for every candidate.
      Sums mom[2];
      SumTerms<2>(
          n,
          [&](size_t i, VF(*acc)[kParts], size_t k) {
            const VF v = hn::Load(d, xt + i * N);
            acc[0][k] = hn::Add(acc[0][k], v);
            acc[1][k] = hn::Add(acc[1][k], hn::Mul(v, v));
          },
          [&](size_t i, Sums* o) {
            const VF v = hn::Load(d, xt + i * N);
            o[0].lo = hn::Add(o[0].lo, Lo(v));
            o[0].hi = hn::Add(o[0].hi, Hi(v));
            o[1].lo = hn::Add(o[1].lo, hn::Mul(Lo(v), Lo(v)));
            o[1].hi = hn::Add(o[1].hi, hn::Mul(Hi(v), Hi(v)));
          },
          mom);
      Top top_lo, top_hi;
      top_lo.Init();
      top_hi.Init();
      for (int is = 0; is <= kSteps; is += kSearchStride) {
        const VF iscale =
            hn::Div(hn::Set(d, qmax + kRMin + kRDelta * static_cast<float>(is)), range);
        Sums cs[3];
        // (x - lo >= 0, so the codes need no clamp at 0.)
        CodeSums(
            xt, n, N,
            [&](size_t i) {
              return ClampRoundNonNeg(hn::Mul(iscale, hn::Load(d, xs + i * N)), vq);
            },
            cs);
        VD ss, mm, r;
        auto ok =
            Solve(vn, cs[0].lo, cs[1].lo, cs[2].lo, mom[0].lo, mom[1].lo, range_lo, &ss, &mm, &r);
        top_lo.Insert(ok, r, ss, mm);
        ok = Solve(vn, cs[0].hi, cs[1].hi, cs[2].hi, mom[0].hi, mom[1].hi, range_hi, &ss, &mm, &r);
        top_hi.Insert(ok, r, ss, mm);
      }
      // A candidate (scale ss, offset -mm, as double halves) scored by GroupSse wins where it
      // is strictly lower; lanes without one (ok false) are scored at a valid grid and ignored.
      auto consider = [&](hn::Mask<DD> ok0, hn::Mask<DD> ok1, VD ss0, VD ss1, VD mm0, VD mm1) {
        const auto ok = ToFloatMask(ok0, ok1);
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
      };
      const VD inf = hn::Set(dd, HUGE_VAL);
      for (int t = 0; t < kSearchTop; ++t) {
        consider(hn::Lt(top_lo.r[t], inf), hn::Lt(top_hi.r[t], inf), top_lo.s[t], top_hi.s[t],
                 top_lo.m[t], top_hi.m[t]);
      }
      for (int it = 0; it < kSearchRefits; ++it) {
        const VF inv =
            hn::IfThenElse(hn::Gt(s, hn::Zero(d)), hn::Div(hn::Set(d, 1.0f), s), hn::Zero(d));
        const VF cur_m = m;
        Sums cs[3];
        CodeSums(
            xt, n, N,
            [&](size_t i) {
              return ClampRound(d, hn::Mul(hn::Add(hn::Load(d, xt + i * N), cur_m), inv), vq);
            },
            cs);
        VD ss0, mm0, r0, ss1, mm1, r1;
        const auto ok0 = Solve(vn, cs[0].lo, cs[1].lo, cs[2].lo, mom[0].lo, mom[1].lo, range_lo,
                               &ss0, &mm0, &r0);
        const auto ok1 = Solve(vn, cs[0].hi, cs[1].hi, cs[2].hi, mom[0].hi, mom[1].hi, range_hi,
                               &ss1, &mm1, &r1);
        consider(ok0, ok1, ss0, ss1, mm0, mm1);
      }
    }
    if (valid == N) {
      hn::StoreU(s, d, scale + j0);
      hn::StoreU(m, d, offset + j0);
    } else {
      hn::StoreU(s, d, pad + 2 * N);
      hn::StoreU(m, d, pad + 3 * N);
      std::copy(pad + 2 * N, pad + 2 * N + valid, scale + j0);
      std::copy(pad + 3 * N, pad + 3 * N + valid, offset + j0);
    }
  }
#endif
  if (batched < count) {
    ref::SearchAsymGroups(x + batched * n, n, count - batched, mn + batched, mx + batched, qmax,
                          scale + batched, offset + batched);
  }
}

void SearchSymGroupsImpl(const float* HWY_RESTRICT x, size_t n, size_t count,
                         const float* HWY_RESTRICT mn, const float* HWY_RESTRICT mx,
                         const SymSearch& p, float* HWY_RESTRICT scale,
                         uint16_t* HWY_RESTRICT bits) {
  const DF d;
  const size_t N = hn::Lanes(d);
  const size_t batched = kBatched && N > 1 ? count : 0;
#if HWY_TARGET != HWY_SCALAR
  const DD dd;
  const float bias = p.bias, qmax = 2.0f * bias - 1.0f;
  float* xt = Scratch(n * N + 6 * N);
  float* pad = xt + n * N;  // mn, mx, candidate scales, their bits, validity, results
  float* cand = pad + 2 * N;
  float* cbits = cand + N;
  float* cok = cbits + N;
  const VF vq = hn::Set(d, qmax), vbias = hn::Set(d, bias);
  for (size_t j0 = 0; j0 < batched; j0 += N) {
    const size_t valid = std::min(N, count - j0);
    Transpose(x, n, j0, valid, N, xt);
    const float* pmn = Padded(mn, j0, valid, N, pad);
    const float* pmx = Padded(mx, j0, valid, N, pad + N);
    VD best_lo = hn::Set(dd, HUGE_VAL), best_hi = best_lo;
    VF best_s = hn::Zero(d), best_b = hn::Zero(d);
    // Scores the stored candidates cand[] (lanes with cok[l] != 0) as the reference's consider.
    auto consider = [&]() {
      const auto ok = hn::Gt(hn::LoadU(d, cok), hn::Zero(d));
      const VF cs = hn::IfThenElse(ok, hn::LoadU(d, cand), hn::Set(d, 1.0f));
      VD sse0, sse1;
      BatchSse(d, xt, n, cs, hn::Mul(cs, vbias), vq, &sse0, &sse1);
      const VF okf = hn::IfThenElseZero(ok, hn::Set(d, 1.0f));
      const auto win0 = hn::And(hn::Gt(Lo(okf), hn::Zero(dd)), hn::Lt(sse0, best_lo));
      const auto win1 = hn::And(hn::Gt(Hi(okf), hn::Zero(dd)), hn::Lt(sse1, best_hi));
      best_lo = hn::IfThenElse(win0, sse0, best_lo);
      best_hi = hn::IfThenElse(win1, sse1, best_hi);
      const auto win = ToFloatMask(win0, win1);
      best_s = hn::IfThenElse(win, cs, best_s);
      best_b = hn::IfThenElse(win, hn::LoadU(d, cbits), best_b);
    };
    auto keeps = [&](size_t l, float s) {
      return !p.keep_extremes || (pmx[l] <= (bias - 0.5f) * s && -pmn[l] <= (bias + 0.5f) * s);
    };
    // The scale rounding to storage runs per lane (the reference's own function): one value per
    // candidate, beside the n values each scoring reads.
    float amax[hn::MaxLanes(d)];
    for (size_t l = 0; l < N; ++l) amax[l] = std::max(std::fabs(pmn[l]), std::fabs(pmx[l]));
    auto store = [&](size_t l, float s, bool up) {
      uint16_t b = 0;
      cand[l] = ref::StoreScale(s, p.f16, up, &b);
      cbits[l] = static_cast<float>(b);
    };
    for (size_t l = 0; l < N; ++l) {
      store(l, amax[l] / (bias - 1.0f), true);
      cok[l] = 1.0f;
    }
    consider();
    if (p.keep_extremes) {
      for (size_t l = 0; l < N; ++l) {
        store(l, amax[l] / bias, true);
        cok[l] = -pmn[l] >= pmx[l] && keeps(l, cand[l]) ? 1.0f : 0.0f;
      }
      consider();
    }
    const VF vamax = hn::LoadU(d, amax);
    const auto has = hn::Gt(vamax, hn::Zero(d));
    if (!hn::AllFalse(d, has)) {
      float ls[hn::MaxLanes(d)];
      for (int is = 0; is <= kSteps; ++is) {
        const float t = (bias - 1.0f) + 1.5f * static_cast<float>(is) / kSteps;
        const VF inv = hn::Div(hn::Set(d, 1.0f), hn::Div(vamax, hn::Set(d, t)));
        VD sxl0 = hn::Zero(dd), sxl1 = sxl0, sl20 = sxl0, sl21 = sxl0;
        for (size_t i = 0; i < n; ++i) {  // double sums in value order, as the reference
          const VF xv = hn::Load(d, xt + i * N);
          const VF L = hn::Sub(ClampRound(d, hn::Add(hn::Mul(xv, inv), vbias), vq), vbias);
          sxl0 = hn::Add(sxl0, hn::Mul(Lo(L), Lo(xv)));
          sxl1 = hn::Add(sxl1, hn::Mul(Hi(L), Hi(xv)));
          sl20 = hn::Add(sl20, hn::Mul(Lo(L), Lo(L)));
          sl21 = hn::Add(sl21, hn::Mul(Hi(L), Hi(L)));
        }
        const auto ok0 = hn::And(hn::Gt(sl20, hn::Zero(dd)), hn::Gt(sxl0, hn::Zero(dd)));
        const auto ok1 = hn::And(hn::Gt(sl21, hn::Zero(dd)), hn::Gt(sxl1, hn::Zero(dd)));
        const auto ok = hn::And(has, ToFloatMask(ok0, ok1));
        const VF cs = ToFloat(hn::Div(sxl0, sl20), hn::Div(sxl1, sl21));
        hn::StoreU(cs, d, ls);
        hn::StoreU(hn::IfThenElseZero(ok, hn::Set(d, 1.0f)), d, cok);
        for (size_t l = 0; l < N; ++l) {
          if (cok[l] == 0.0f) continue;
          store(l, ls[l], false);
          if (!keeps(l, cand[l])) cok[l] = 0.0f;
        }
        consider();
      }
    }
    hn::StoreU(best_s, d, cand);
    hn::StoreU(best_b, d, cbits);
    for (size_t l = 0; l < valid; ++l) {
      scale[j0 + l] = cand[l];
      if (p.f16) bits[j0 + l] = static_cast<uint16_t>(cbits[l]);
    }
  }
#endif
  if (batched < count) {
    ref::SearchSymGroups(x + batched * n, n, count - batched, mn + batched, mx + batched, p,
                         scale + batched, bits == nullptr ? nullptr : bits + batched);
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace arrowquant::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace arrowquant::kernels {

HWY_EXPORT(SearchAsymGroupsImpl);
HWY_EXPORT(CodedNeighboursImpl);
HWY_EXPORT(SearchSymGroupsImpl);

void SearchSymGroups(const float* x, size_t n, size_t count, const float* mn, const float* mx,
                     const SymSearch& p, float* scale, uint16_t* bits) {
  HWY_DYNAMIC_DISPATCH(SearchSymGroupsImpl)(x, n, count, mn, mx, p, scale, bits);
}

void CodedNeighbours(const float* x, size_t n, size_t count, const int* ls0, const int* lm0,
                     const CodedGrid& grid, uint8_t* ls, uint8_t* lm) {
  HWY_DYNAMIC_DISPATCH(CodedNeighboursImpl)(x, n, count, ls0, lm0, grid, ls, lm);
}

void SearchAsymGroups(const float* x, size_t n, size_t count, const float* mn, const float* mx,
                      float qmax, float* scale, float* offset) {
  HWY_DYNAMIC_DISPATCH(SearchAsymGroupsImpl)(x, n, count, mn, mx, qmax, scale, offset);
}

}  // namespace arrowquant::kernels
#endif  // HWY_ONCE
