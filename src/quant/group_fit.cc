#include "quant/group_fit.h"

#include <algorithm>
#include <limits>

#include "kernels/grid_search.h"
#include "kernels/round.h"
#include "kernels/row_kernels.h"

namespace arrowquant::quant {
namespace {

constexpr int kSteps = kernels::kSearchSteps;
constexpr float kRMin = kernels::kSearchRMin;
constexpr float kRDelta = kernels::kSearchRDelta;

// Smallest f16 >= v (v >= 0): keeps the min/max grid's range covering the group.
uint16_t F16Up(float v) {
  uint16_t h = 0;
  kernels::ref::StoreScale(v, /*f16=*/true, /*up=*/true, &h);
  return h;
}
bool F16Finite(uint16_t h) {
  return (h & 0x7c00u) != 0x7c00u;
}

using kernels::ClampRound;

// Round half to even for values that may be large (outside any code range): std::nearbyint's
// result, without its library call for the usual small values.
float Nearest(float v) {
  return std::fabs(v) < 4194304.0f ? kernels::RoundSmall(v) : std::nearbyint(v);  // 2^22
}

using kernels::ref::FitLinear;

// The row's coded-scale grid (DecodeGroup's kCoded arithmetic), for the neighbour search.
kernels::CodedGrid CodedGridOf(const Format& f, const RowStored& st) {
  return {F16BitsToF32(st.d), F16BitsToF32(st.dmin), f.cmax, f.sym, f.bias, f.qmax};
}

// Per-thread working buffers of FitRow.
struct RowScratch {
  std::vector<float> mn, mx, L, s, m;
  std::vector<int> ls0, lm0;
  std::vector<ContinuousParams> c;
};

[[gnu::noinline]] RowScratch& ThisThreadScratch() {
  thread_local RowScratch scratch;
  return scratch;
}

// Continuous asymmetric candidates (scale, offset = -min) for one group, best first by the
// evaluator `eval(scale, offset) -> sse`, which applies the storage format.
template <typename Eval>
void SearchAsym(const float* x, size_t n, float lo, float hi, float qmax, bool m_nonneg,
                std::vector<float>& L, Eval&& eval) {
  const float range = hi - lo;
  if (!(range > 0)) return;
  L.resize(n);
  for (int is = 0; is <= kSteps; ++is) {
    const float iscale = (qmax + kRMin + kRDelta * static_cast<float>(is)) / range;
    for (size_t i = 0; i < n; ++i) L[i] = ClampRound(iscale * (x[i] - lo), qmax);
    float s, mn;
    if (FitLinear(x, L.data(), n, m_nonneg, &s, &mn)) eval(s, -mn);
  }
}

// The continuous symmetric search of `count` groups of n values: the kernel's with unrounded
// (f32) scales; where no candidate scores (squares beyond float's range) the min/max scale.
void SymContinuous(const Format& f, const float* x, size_t n, size_t count, const float* mn,
                   const float* mx, float* s) {
  kernels::SearchSymGroups(x, n, count, mn, mx, {f.bias, false, f.keep_extremes}, s, nullptr);
  for (size_t gi = 0; gi < count; ++gi) {
    if (s[gi] == 0.0f) s[gi] = std::max(std::fabs(mn[gi]), std::fabs(mx[gi])) / (f.bias - 1.0f);
  }
}

// --- kF16 / kF32: a float scale per group, integer zero-point --------------------------------

// The min/max grid needs no search: every step is a loop over the row's groups.
void FitFloatRowMinMax(const Format& f, size_t groups, RowStored& st, const float* mn,
                       const float* mx, bool* ok) {
  thread_local std::vector<float> s, lo;
  s.resize(groups);
  lo.resize(groups);
  for (size_t gi = 0; gi < groups; ++gi) {
    if (f.sym) {
      s[gi] = std::max(std::fabs(mn[gi]), std::fabs(mx[gi])) / (f.bias - 1.0f);
    } else {
      lo[gi] = std::min(mn[gi], 0.0f) + 0.0f;  // + 0.0f: -0 -> +0
      s[gi] = (std::max(mx[gi], 0.0f) - lo[gi]) / f.qmax;
    }
  }
  if (f.spec.scales == ScaleStorage::kF16) {
    kernels::F32ToF16Up(s.data(), groups, st.scale_f16.data());
    for (size_t gi = 0; gi < groups; ++gi) *ok &= F16Finite(st.scale_f16[gi]);
    kernels::ToF32(DType::kF16, st.scale_f16.data(), groups, s.data());
  } else {
    for (size_t gi = 0; gi < groups; ++gi) *ok &= std::isfinite(s[gi]);
    std::copy(s.begin(), s.end(), st.scale_f32.begin());
  }
  if (f.sym) return;
  for (size_t gi = 0; gi < groups; ++gi) {
    st.zero[gi] = static_cast<uint8_t>(s[gi] > 0 ? ClampRound(-lo[gi] / s[gi], f.qmax) : 0.0f);
  }
}

// The symmetric search (kernels::SearchSymGroups): the row's whole groups side by side, a
// shorter last group on its own.
void FitFloatRowSym(const Format& f, const float* x, size_t n, size_t g, RowStored& st,
                    const float* mn, const float* mx, bool* ok) {
  const bool f16 = f.spec.scales == ScaleStorage::kF16;
  const kernels::SymSearch p{f.bias, f16, f.keep_extremes};
  const size_t whole = n / g, groups = (n + g - 1) / g;
  thread_local std::vector<float> s;
  s.resize(groups);
  uint16_t* bits = f16 ? st.scale_f16.data() : nullptr;
  kernels::SearchSymGroups(x, g, whole, mn, mx, p, s.data(), bits);
  if (whole < groups) {
    kernels::SearchSymGroups(x + whole * g, n - whole * g, 1, mn + whole, mx + whole, p,
                             s.data() + whole, f16 ? bits + whole : nullptr);
  }
  for (size_t gi = 0; gi < groups; ++gi) {
    // The min/max grid's scale overflows the storage: the values are too large for it.
    const float amax = std::max(std::fabs(mn[gi]), std::fabs(mx[gi]));
    uint16_t b = 0;
    if (!std::isfinite(kernels::ref::StoreScale(amax / (f.bias - 1.0f), f16, true, &b))) {
      *ok = false;
    }
    if (f16) {
      if (!F16Finite(st.scale_f16[gi])) *ok = false;
    } else {
      st.scale_f32[gi] = s[gi];
    }
  }
}

void FitFloatRow(const Format& f, const float* x, size_t n, size_t g, RowStored& st,
                 const float* mn, const float* mx, std::vector<float>& L, bool* ok) {
  if (f.sym) {
    FitFloatRowSym(f, x, n, g, st, mn, mx, ok);
    return;
  }
  const bool f16 = f.spec.scales == ScaleStorage::kF16;
  const bool search = f.spec.grid == Grid::kSearch;
  for (size_t start = 0, gi = 0; start < n; start += g, ++gi) {
    const size_t len = std::min(g, n - start);
    const float* xg = x + start;
    uint16_t best_bits = 0;
    float best_s = 0;
    uint8_t best_z = 0;
    double best_sse = std::numeric_limits<double>::infinity();
    auto consider = [&](float s_store, uint16_t bits, float z) {
      const float off = s_store * z;
      // The min/max grid has a single candidate: no need to measure it.
      const double sse = search ? GroupSse(xg, len, s_store, off, f.qmax) : 0.0;
      if (sse < best_sse) {
        best_sse = sse;
        best_s = s_store;
        best_bits = bits;
        best_z = static_cast<uint8_t>(z);
      }
    };
    const float lo = std::min(mn[gi], 0.0f) + 0.0f;  // + 0.0f: -0 -> +0
    const float hi = std::max(mx[gi], 0.0f);
    uint16_t bits = 0;
    const float s = kernels::ref::StoreScale((hi - lo) / f.qmax, f16, /*up=*/true, &bits);
    if (!std::isfinite(s)) *ok = false;
    const float z = s > 0 ? std::min(std::max(Nearest(-lo / s), 0.0f), f.qmax) : 0.0f;
    consider(s, bits, z);
    if (search) {
      SearchAsym(xg, len, lo, hi, f.qmax, /*m_nonneg=*/true, L, [&](float cs, float coff) {
        uint16_t b = 0;
        const float ss = kernels::ref::StoreScale(cs, f16, /*up=*/false, &b);
        if (!(ss > 0)) return;
        const float cz = std::min(std::max(Nearest(coff / ss), 0.0f), f.qmax);
        consider(ss, b, cz);
      });
    }
    if (f16) {
      st.scale_f16[gi] = best_bits;
      if (!F16Finite(best_bits)) *ok = false;
    } else {
      st.scale_f32[gi] = best_s;
    }
    st.zero[gi] = best_z;
  }
}

// --- kCoded: scale/offset codes under per-row f16 super-scales -----------------------------

}  // namespace

void ContinuousGroup(const Format& f, const float* xg, size_t len, float mn, float mx,
                     ContinuousParams* out) {
  const bool search = f.spec.grid == Grid::kSearch;
  ContinuousParams& c = *out;
  if (f.sym) {
    c.m = 0;
    if (search) {
      SymContinuous(f, xg, len, 1, &mn, &mx, &c.s);
    } else {
      c.s = std::max(std::fabs(mn), std::fabs(mx)) / (f.bias - 1.0f);
    }
    return;
  }
  c.hi = std::max(mx, 0.0f);
  if (search) {
    kernels::ref::SearchAsymGroups(xg, len, 1, &mn, &mx, f.qmax, &c.s, &c.m);
    return;
  }
  const float lo = std::min(mn, 0.0f) + 0.0f;
  c.s = (c.hi - lo) / f.qmax;
  c.m = -lo;
}

void CodeOffset(const Format& f, float dmin, RowStored& st, size_t gi, ContinuousParams& c) {
  const bool search = f.spec.grid == Grid::kSearch;
  float lm = dmin > 0 ? (search ? Nearest(c.m / dmin) : std::ceil(c.m / dmin)) : 0.0f;
  lm = std::min(lm, static_cast<float>(f.cmax));
  if (!search) {
    while (lm < f.cmax && dmin * lm < c.m) lm += 1.0f;
    // The min/max grid must still reach the group's top once the offset is rounded up.
    c.s = (c.hi + dmin * lm) / f.qmax;
  }
  st.lm[gi] = static_cast<uint8_t>(lm);
}

void CodeScale(const Format& f, const float* xg, size_t len, float s, RowStored& st, size_t gi) {
  const bool search = f.spec.grid == Grid::kSearch;
  const float d = F16BitsToF32(st.d);
  float ls = d > 0 ? (search ? Nearest(s / d) : std::ceil(s / d)) : 0.0f;
  ls = std::min(ls, static_cast<float>(f.cmax));
  if (!search) {
    while (ls < f.cmax && d * ls < s) ls += 1.0f;
    st.ls[gi] = static_cast<uint8_t>(ls);
    return;
  }
  // Search: the neighbouring codes of the rounded scale (and offset), by actual error.
  const int ls0 = static_cast<int>(ls), lm0 = f.sym ? 0 : st.lm[gi];
  kernels::ref::CodedNeighbours(xg, len, 1, &ls0, &lm0, CodedGridOf(f, st), &st.ls[gi],
                                f.sym ? nullptr : &st.lm[gi]);
}

namespace {

// CodeScale's search for groups 0 .. count - 1 of a row (all of length g), every group's
// neighbouring codes scored side by side (kernels::CodedNeighbours, CodeScale's candidates in
// CodeScale's order, so the codes are CodeScale's).
void CodeScalesSearch(const Format& f, const float* x, size_t g, size_t count,
                      const ContinuousParams* c, RowStored& st, RowScratch& scratch) {
  std::vector<int>& ls0 = scratch.ls0;
  std::vector<int>& lm0 = scratch.lm0;
  ls0.resize(count);
  lm0.resize(count);
  const float d = F16BitsToF32(st.d);
  for (size_t gi = 0; gi < count; ++gi) {
    float ls = d > 0 ? Nearest(c[gi].s / d) : 0.0f;
    ls0[gi] = static_cast<int>(std::min(ls, static_cast<float>(f.cmax)));
    lm0[gi] = f.sym ? 0 : st.lm[gi];
  }
  kernels::CodedNeighbours(x, g, count, ls0.data(), lm0.data(), CodedGridOf(f, st), st.ls.data(),
                           f.sym ? nullptr : st.lm.data());
}

// Stage 1 of a kCoded fit: continuous (scale, offset) of every group of x (n values) into
// scratch.c; the searches run the whole groups side by side (SIMD), a short last one alone.
void ContinuousGroups(const Format& f, const float* x, size_t n, size_t g, const float* mn,
                      const float* mx, RowScratch& scratch) {
  const size_t groups = (n + g - 1) / g;
  std::vector<ContinuousParams>& c = scratch.c;
  c.assign(groups, ContinuousParams{});
  size_t first = 0;
  if (f.sym && f.spec.grid == Grid::kSearch && n / g >= 1) {
    std::vector<float>& s = scratch.s;
    first = n / g;
    s.resize(first);
    SymContinuous(f, x, g, first, mn, mx, s.data());
    for (size_t gi = 0; gi < first; ++gi) c[gi].s = s[gi];
  } else if (!f.sym && f.spec.grid == Grid::kSearch && n / g >= 1) {
    std::vector<float>& s = scratch.s;
    std::vector<float>& m = scratch.m;
    first = n / g;
    s.resize(first);
    m.resize(first);
    kernels::SearchAsymGroups(x, g, first, mn, mx, f.qmax, s.data(), m.data());
    for (size_t gi = 0; gi < first; ++gi) {
      c[gi].s = s[gi];
      c[gi].m = m[gi];
      c[gi].hi = std::max(mx[gi], 0.0f);
    }
  }
  for (size_t gi = first; gi < groups; ++gi) {
    const size_t start = gi * g;
    ContinuousGroup(f, x + start, std::min(g, n - start), mn[gi], mx[gi], &c[gi]);
  }
}

// Stage 2: the super-scales of x (n values, groups c[0 ..]) and the codes under them.
void CodeGroups(const Format& f, const float* x, size_t n, size_t g, ContinuousParams* c,
                RowStored& st, RowScratch& scratch, bool* ok) {
  const size_t groups = (n + g - 1) / g;
  if (!f.sym) {
    float max_m = 0;
    for (size_t gi = 0; gi < groups; ++gi) max_m = std::max(max_m, c[gi].m);
    // Rounded up so that the largest group still reaches its range (matters when the
    // super-scale is an f16 subnormal, i.e. for very small weights).
    st.dmin = F16Up(max_m / f.cmax);
    if (!F16Finite(st.dmin)) *ok = false;
    const float dmin = F16BitsToF32(st.dmin);
    for (size_t gi = 0; gi < groups; ++gi) CodeOffset(f, dmin, st, gi, c[gi]);
  }
  float max_s = 0;
  for (size_t gi = 0; gi < groups; ++gi) max_s = std::max(max_s, c[gi].s);
  st.d = F16Up(max_s / f.cmax);
  if (!F16Finite(st.d)) *ok = false;
  size_t first_scale = 0;
  if (f.spec.grid == Grid::kSearch && n / g >= 1) {
    first_scale = n / g;
    CodeScalesSearch(f, x, g, first_scale, c, st, scratch);
  }
  for (size_t gi = first_scale; gi < groups; ++gi) {
    const size_t start = gi * g;
    CodeScale(f, x + start, std::min(g, n - start), c[gi].s, st, gi);
  }
}

void FitCodedRow(const Format& f, const float* x, size_t n, size_t g, RowStored& st,
                 const float* mn, const float* mx, RowScratch& scratch, bool* ok) {
  ContinuousGroups(f, x, n, g, mn, mx, scratch);
  CodeGroups(f, x, n, g, scratch.c.data(), st, scratch, ok);
}

}  // namespace

void RowStored::Resize(const Format& f, size_t groups) {
  switch (f.spec.scales) {
    case ScaleStorage::kF16: scale_f16.resize(groups); break;
    case ScaleStorage::kF32: scale_f32.resize(groups); break;
    case ScaleStorage::kCoded:
      ls.resize(groups);
      lm.resize(f.sym ? 0 : groups);
      break;
  }
  if (f.spec.scales != ScaleStorage::kCoded) zero.resize(f.sym ? 0 : groups);
}

void DecodeGroup(const Format& f, const RowStored& st, size_t gi, float* scale, float* offset) {
  float s = 0, off = 0;
  switch (f.spec.scales) {
    case ScaleStorage::kF16: s = F16BitsToF32(st.scale_f16[gi]); break;
    case ScaleStorage::kF32: s = st.scale_f32[gi]; break;
    case ScaleStorage::kCoded: s = F16BitsToF32(st.d) * static_cast<float>(st.ls[gi]); break;
  }
  if (f.sym) {
    off = s * f.bias;
  } else if (f.spec.scales == ScaleStorage::kCoded) {
    off = F16BitsToF32(st.dmin) * static_cast<float>(st.lm[gi]);
  } else {
    off = s * static_cast<float>(st.zero[gi]);
  }
  *scale = s;
  *offset = off;
}

void DecodeRow(const Format& f, const RowStored& st, size_t groups, RowParams& p) {
  p.Resize(groups);
  // Same arithmetic as DecodeGroup, as loops over the row (they vectorize).
  switch (f.spec.scales) {
    case ScaleStorage::kF16:
      kernels::ToF32(DType::kF16, st.scale_f16.data(), groups, p.scale.data());
      break;
    case ScaleStorage::kF32:
      std::copy(st.scale_f32.begin(), st.scale_f32.end(), p.scale.begin());
      break;
    case ScaleStorage::kCoded: {
      const float d = F16BitsToF32(st.d);
      for (size_t gi = 0; gi < groups; ++gi) p.scale[gi] = d * static_cast<float>(st.ls[gi]);
      break;
    }
  }
  if (f.sym) {
    for (size_t gi = 0; gi < groups; ++gi) p.offset[gi] = p.scale[gi] * f.bias;
  } else if (f.spec.scales == ScaleStorage::kCoded) {
    const float dmin = F16BitsToF32(st.dmin);
    for (size_t gi = 0; gi < groups; ++gi) p.offset[gi] = dmin * static_cast<float>(st.lm[gi]);
  } else {
    for (size_t gi = 0; gi < groups; ++gi)
      p.offset[gi] = p.scale[gi] * static_cast<float>(st.zero[gi]);
  }
  for (size_t gi = 0; gi < groups; ++gi) p.inv_scale[gi] = InvScale(p.scale[gi]);
}

double GroupSse(const float* x, size_t len, float scale, float offset, float qmax) {
  return kernels::ref::GroupSse(x, len, scale, offset, qmax);
}

bool FitRow(const Format& f, const float* x, size_t n, size_t g, RowStored& st, RowParams& p) {
  const size_t groups = (n + g - 1) / g;
  st.Resize(f, groups);
  // One thread-local lookup per row: in a shared library every access to a thread_local costs a
  // __tls_get_addr call, and the compiler repeats it inside loops (3% of the SD1.5 job).
  RowScratch& scratch = ThisThreadScratch();
  std::vector<float>& mn = scratch.mn;
  std::vector<float>& mx = scratch.mx;
  std::vector<float>& L = scratch.L;
  mn.resize(groups);
  mx.resize(groups);
  kernels::GroupMinMax(x, n, g, mn.data(), mx.data());
  bool ok = true;
  if (f.spec.scales == ScaleStorage::kCoded) {
    FitCodedRow(f, x, n, g, st, mn.data(), mx.data(), scratch, &ok);
  } else if (f.spec.grid == Grid::kMinMax) {
    FitFloatRowMinMax(f, groups, st, mn.data(), mx.data(), &ok);
  } else {
    FitFloatRow(f, x, n, g, st, mn.data(), mx.data(), L, &ok);
  }
  DecodeRow(f, st, groups, p);
  return ok;
}

}  // namespace arrowquant::quant

namespace arrowquant::quant {

bool FitSuperBlocks(const Format& f, const float* x, size_t n, size_t g, size_t super,
                    std::vector<RowStored>& st, std::vector<RowParams>& p) {
  const size_t groups = n / g, blocks = n / super, per = super / g;
  RowScratch& scratch = ThisThreadScratch();
  scratch.mn.resize(groups);
  scratch.mx.resize(groups);
  kernels::GroupMinMax(x, n, g, scratch.mn.data(), scratch.mx.data());
  ContinuousGroups(f, x, n, g, scratch.mn.data(), scratch.mx.data(), scratch);
  st.resize(blocks);
  p.resize(blocks);
  bool ok = true;
  for (size_t k = 0; k < blocks; ++k) {
    st[k].Resize(f, per);
    CodeGroups(f, x + k * super, super, g, scratch.c.data() + k * per, st[k], scratch, &ok);
    DecodeRow(f, st[k], per, p[k]);
  }
  return ok;
}

bool FitGroup(const Format& f, const float* xg, size_t len, RowStored& st, size_t gi) {
  thread_local std::vector<float> L;
  float mn = 0, mx = 0;
  kernels::GroupMinMax(xg, len, len, &mn, &mx);
  bool ok = true;
  if (f.spec.scales == ScaleStorage::kCoded) {
    ContinuousParams c;
    ContinuousGroup(f, xg, len, mn, mx, &c);
    if (!f.sym) CodeOffset(f, F16BitsToF32(st.dmin), st, gi, c);
    CodeScale(f, xg, len, c.s, st, gi);
    return ok;
  }
  thread_local RowStored one;
  one.Resize(f, 1);
  if (f.spec.grid == Grid::kMinMax) {
    FitFloatRowMinMax(f, 1, one, &mn, &mx, &ok);
  } else {
    FitFloatRow(f, xg, len, len, one, &mn, &mx, L, &ok);
  }
  if (f.spec.scales == ScaleStorage::kF16) {
    st.scale_f16[gi] = one.scale_f16[0];
  } else {
    st.scale_f32[gi] = one.scale_f32[0];
  }
  if (!f.sym) st.zero[gi] = one.zero[0];
  return ok;
}

}  // namespace arrowquant::quant
