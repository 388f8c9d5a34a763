// SIMD versions of kernels/row_kernels.h, compiled for every Highway target and dispatched at
// run time. Each op mirrors the reference exactly (add, multiply, clamp, round-half-even; a
// multiply then a subtract) so that codes and outputs are bit-identical.
#include <algorithm>
#include <cstring>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/row_kernels_hwy.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/pack.h"
#include "kernels/row_kernels.h"

HWY_BEFORE_NAMESPACE();
namespace arrowquant::kernels {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void GroupMinMaxImpl(const float* HWY_RESTRICT x, size_t n, size_t g, float* HWY_RESTRICT mn,
                     float* HWY_RESTRICT mx) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  for (size_t start = 0, gi = 0; start < n; start += g, ++gi) {
    const size_t len = std::min(g, n - start);
    const float* p = x + start;
    float lo = p[0], hi = p[0];
    size_t i = 0;
    if (len >= N) {
      auto vlo = hn::LoadU(d, p);
      auto vhi = vlo;
      for (i = N; i + N <= len; i += N) {
        const auto v = hn::LoadU(d, p + i);
        vlo = hn::Min(vlo, v);
        vhi = hn::Max(vhi, v);
      }
      lo = hn::GetLane(hn::MinOfLanes(d, vlo));
      hi = hn::GetLane(hn::MaxOfLanes(d, vhi));
    }
    for (; i < len; ++i) {
      lo = std::min(lo, p[i]);
      hi = std::max(hi, p[i]);
    }
    mn[gi] = lo;
    mx[gi] = hi;
  }
}

void QuantizeGroupsImpl(const float* HWY_RESTRICT x, size_t n, size_t g,
                        const float* HWY_RESTRICT inv_scale, const float* HWY_RESTRICT offset,
                        float qmax, uint8_t* HWY_RESTRICT codes) {
  const hn::ScalableTag<float> d;
  const hn::Rebind<int32_t, decltype(d)> di;
  const hn::Rebind<uint8_t, decltype(d)> du8;
  const size_t N = hn::Lanes(d);
  const auto vmax = hn::Set(d, qmax);
  const auto vzero = hn::Zero(d);
  for (size_t start = 0, gi = 0; start < n; start += g, ++gi) {
    const size_t len = std::min(g, n - start);
    const auto vinv = hn::Set(d, inv_scale[gi]);
    const auto voff = hn::Set(d, offset[gi]);
    size_t i = 0;
    for (; i + N <= len; i += N) {
      const auto v = hn::Mul(hn::Add(hn::LoadU(d, x + start + i), voff), vinv);
      const auto r = hn::Round(hn::Min(hn::Max(v, vzero), vmax));
      hn::StoreU(hn::DemoteTo(du8, hn::ConvertTo(di, r)), du8, codes + start + i);
    }
    if (i < len) {
      ref::QuantizeGroups(x + start + i, len - i, len - i, inv_scale + gi, offset + gi, qmax,
                          codes + start + i);
    }
  }
}

void DequantizeGroupsImpl(const uint8_t* HWY_RESTRICT codes, size_t n, size_t g,
                          const float* HWY_RESTRICT scale, const float* HWY_RESTRICT offset,
                          float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> d;
  const hn::Rebind<int32_t, decltype(d)> di;
  const hn::Rebind<uint8_t, decltype(d)> du8;
  const size_t N = hn::Lanes(d);
  for (size_t start = 0, gi = 0; start < n; start += g, ++gi) {
    const size_t len = std::min(g, n - start);
    const auto vs = hn::Set(d, scale[gi]);
    const auto voff = hn::Set(d, offset[gi]);
    size_t i = 0;
    for (; i + N <= len; i += N) {
      const auto c = hn::ConvertTo(d, hn::PromoteTo(di, hn::LoadU(du8, codes + start + i)));
      hn::StoreU(hn::Sub(hn::Mul(c, vs), voff), d, out + start + i);
    }
    if (i < len) {
      ref::DequantizeGroups(codes + start + i, len - i, len - i, scale + gi, offset + gi,
                            out + start + i);
    }
  }
}

// Highway 1.0.3 emulates f16 -> f32 on targets without F16C and turns +inf into 65536 there
// (found by tests/cpp/test_kernels.cc); those targets use the reference conversion.
#if HWY_TARGET == HWY_SSE4 || HWY_TARGET == HWY_SSSE3 || HWY_TARGET == HWY_EMU128 || \
    HWY_TARGET == HWY_SCALAR
constexpr bool kNativeF16 = false;
#else
constexpr bool kNativeF16 = true;
#endif

void ToF32Impl(DType dtype, const void* src, size_t n, float* HWY_RESTRICT out) {
  const hn::ScalableTag<float> d;
  const hn::Rebind<uint16_t, decltype(d)> du16;
  const hn::Rebind<uint32_t, decltype(d)> du32;
  const hn::Rebind<hwy::float16_t, decltype(d)> df16;
  const size_t N = hn::Lanes(d);
  const auto* bytes = static_cast<const uint8_t*>(src);
  size_t i = 0;
  if (dtype == DType::kBF16) {
    for (; i + N <= n; i += N) {
      const auto h = hn::LoadU(du16, reinterpret_cast<const uint16_t*>(bytes + 2 * i));
      const auto w = hn::ShiftLeft<16>(hn::PromoteTo(du32, h));
      hn::StoreU(hn::BitCast(d, w), d, out + i);
    }
  } else if (dtype == DType::kF16 && kNativeF16) {
    for (; i + N <= n; i += N) {
      const auto h = hn::LoadU(df16, reinterpret_cast<const hwy::float16_t*>(bytes + 2 * i));
      hn::StoreU(hn::PromoteTo(d, h), d, out + i);
    }
  }
  ref::ToF32(dtype, bytes + ElementBytes(dtype) * i, n - i, out + i);
}

// INT4 and INT2 packing: adjacent codes are read as one wider lane and folded into a byte.
void PackCodesImpl(const uint8_t* HWY_RESTRICT codes, size_t n, int bits,
                   uint8_t* HWY_RESTRICT out) {
  size_t i = 0;
  if (bits == 4) {
    const hn::ScalableTag<uint16_t> d16;
    const hn::Rebind<uint8_t, decltype(d16)> d8;
    const hn::RebindToSigned<decltype(d16)> di16;
    const size_t N = hn::Lanes(d16);
    const auto lo = hn::Set(d16, 0x000f), hi = hn::Set(d16, 0x00f0);
    for (; i + 2 * N <= n; i += 2 * N) {
      const auto v = hn::LoadU(d16, reinterpret_cast<const uint16_t*>(codes + i));
      const auto p = hn::Or(hn::And(v, lo), hn::And(hn::ShiftRight<4>(v), hi));
      hn::StoreU(hn::DemoteTo(d8, hn::BitCast(di16, p)), d8, out + i / 2);
    }
  } else if (bits == 2) {
    const hn::ScalableTag<uint32_t> d32;
    const hn::Rebind<uint8_t, decltype(d32)> d8;
    const hn::RebindToSigned<decltype(d32)> di32;
    const size_t N = hn::Lanes(d32);
    const auto m0 = hn::Set(d32, 0x03u), m1 = hn::Set(d32, 0x0cu), m2 = hn::Set(d32, 0x30u),
               m3 = hn::Set(d32, 0xc0u);
    for (; i + 4 * N <= n; i += 4 * N) {
      const auto v = hn::LoadU(d32, reinterpret_cast<const uint32_t*>(codes + i));
      auto p = hn::And(v, m0);
      p = hn::Or(p, hn::And(hn::ShiftRight<6>(v), m1));
      p = hn::Or(p, hn::And(hn::ShiftRight<12>(v), m2));
      p = hn::Or(p, hn::And(hn::ShiftRight<18>(v), m3));
      hn::StoreU(hn::DemoteTo(d8, hn::BitCast(di32, p)), d8, out + i / 4);
    }
  }
  ref::PackCodes(codes + i, n - i, bits, out + i * static_cast<size_t>(bits) / 8);
}

void F32ToF16UpImpl(const float* HWY_RESTRICT x, size_t n, uint16_t* HWY_RESTRICT out) {
  size_t i = 0;
  if constexpr (kNativeF16) {
    const hn::ScalableTag<float> d;
    const hn::Rebind<hwy::float16_t, decltype(d)> df16;
    const hn::Rebind<uint16_t, decltype(d)> du16;
    const hn::Rebind<uint32_t, decltype(d)> du32;
    const hn::Rebind<int32_t, decltype(d)> di32;
    const size_t N = hn::Lanes(d);
    const auto inf = hn::Set(du32, 0x7c00u);
    const auto one = hn::Set(du32, 1u);
    for (; i + N <= n; i += N) {
      const auto v = hn::LoadU(d, x + i);
      const auto h = hn::DemoteTo(df16, v);  // IEEE round to nearest even
      const auto below = hn::Lt(hn::PromoteTo(d, h), v);
      auto bits = hn::PromoteTo(du32, hn::BitCast(du16, h));
      const auto bump = hn::And(hn::RebindMask(du32, below), hn::Lt(bits, inf));
      bits = hn::IfThenElse(bump, hn::Add(bits, one), bits);
      hn::StoreU(hn::DemoteTo(du16, hn::BitCast(di32, bits)), du16, out + i);
    }
  }
  ref::F32ToF16Up(x + i, n - i, out + i);
}

// f16: the hardware conversion rounds to nearest even like the table, except that NaN payloads
// are handled differently, so lanes holding NaN take the reference. bf16: the table's integer
// rounding, lane by lane.
void FromF32Impl(DType dtype, const float* HWY_RESTRICT x, size_t n, uint16_t* HWY_RESTRICT out) {
  const hn::ScalableTag<float> d;
  const hn::Rebind<uint32_t, decltype(d)> du32;
  const hn::Rebind<int32_t, decltype(d)> di32;
  const hn::Rebind<uint16_t, decltype(d)> du16;
  const hn::Rebind<hwy::float16_t, decltype(d)> df16;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  if (dtype == DType::kBF16) {
    const auto bias = hn::Set(du32, 0x7fffu);
    const auto one = hn::Set(du32, 1u);
    for (; i + N <= n; i += N) {
      const auto v = hn::LoadU(d, x + i);
      if (!hn::AllFalse(d, hn::IsNaN(v))) break;
      const auto b = hn::BitCast(du32, v);
      const auto r =
          hn::ShiftRight<16>(hn::Add(b, hn::Add(bias, hn::And(hn::ShiftRight<16>(b), one))));
      hn::StoreU(hn::DemoteTo(du16, hn::BitCast(di32, r)), du16, out + i);
    }
  } else if (kNativeF16) {
    for (; i + N <= n; i += N) {
      const auto v = hn::LoadU(d, x + i);
      if (!hn::AllFalse(d, hn::IsNaN(v))) break;
      hn::StoreU(hn::BitCast(du16, hn::DemoteTo(df16, v)), du16, out + i);
    }
  }
  ref::FromF32(dtype, x + i, n - i, out + i);
}

void UnpackCodesImpl(const uint8_t* HWY_RESTRICT packed, size_t n, int bits,
                     uint8_t* HWY_RESTRICT codes) {
  size_t i = 0;  // codes done
  if (bits == 4) {
    const hn::ScalableTag<uint16_t> d16;
    const hn::Rebind<uint8_t, decltype(d16)> d8;
    const size_t N = hn::Lanes(d16);
    const auto lo = hn::Set(d16, 0x000f), hi = hn::Set(d16, 0x00f0);
    for (; i + 2 * N <= n; i += 2 * N) {
      const auto b = hn::PromoteTo(d16, hn::LoadU(d8, packed + i / 2));
      const auto v = hn::Or(hn::And(b, lo), hn::ShiftLeft<4>(hn::And(b, hi)));
      hn::StoreU(v, d16, reinterpret_cast<uint16_t*>(codes + i));
    }
  } else if (bits == 2) {
    const hn::ScalableTag<uint32_t> d32;
    const hn::Rebind<uint8_t, decltype(d32)> d8;
    const size_t N = hn::Lanes(d32);
    const auto m0 = hn::Set(d32, 0x03u), m1 = hn::Set(d32, 0x0cu), m2 = hn::Set(d32, 0x30u),
               m3 = hn::Set(d32, 0xc0u);
    for (; i + 4 * N <= n; i += 4 * N) {
      const auto b = hn::PromoteTo(d32, hn::LoadU(d8, packed + i / 4));
      auto v = hn::And(b, m0);
      v = hn::Or(v, hn::ShiftLeft<6>(hn::And(b, m1)));
      v = hn::Or(v, hn::ShiftLeft<12>(hn::And(b, m2)));
      v = hn::Or(v, hn::ShiftLeft<18>(hn::And(b, m3)));
      hn::StoreU(v, d32, reinterpret_cast<uint32_t*>(codes + i));
    }
  }
  if (bits != 2 && bits != 4 && bits != 8) {
    // Other widths (6/7-bit scale codes): eight codes fill exactly `bits` bytes.
    const uint64_t mask = (1u << bits) - 1u;
    for (; i + 8 <= n; i += 8) {
      uint64_t v = 0;
      std::memcpy(&v, packed + i * static_cast<size_t>(bits) / 8,
                  static_cast<size_t>(bits));  // little-endian
      for (int j = 0; j < 8; ++j) codes[i + j] = static_cast<uint8_t>((v >> (j * bits)) & mask);
    }
  }
  ref::UnpackCodes(packed + i * static_cast<size_t>(bits) / 8, n - i, bits, codes + i);
}

// One pass per row: codes are unpacked 256 at a time (blocks start on whole bytes for any code
// width) into a stack buffer, then dequantized group segment by group segment, converted in
// registers and stored straight into the output (no f32 row, no extra copy).
void DequantizePackedImpl(const uint8_t* HWY_RESTRICT packed, int bits, size_t n, size_t g,
                          const float* HWY_RESTRICT scale, const float* HWY_RESTRICT offset,
                          DType dtype, void* HWY_RESTRICT out) {
  if (dtype == DType::kF16 && !kNativeF16) {
    ref::DequantizePacked(packed, bits, n, g, scale, offset, dtype, out);
    return;
  }
  const hn::ScalableTag<float> d;
  const hn::Rebind<int32_t, decltype(d)> di32;
  const hn::Rebind<uint32_t, decltype(d)> du32;
  const hn::Rebind<uint16_t, decltype(d)> du16;
  const hn::Rebind<uint8_t, decltype(d)> du8;
  const hn::Rebind<hwy::float16_t, decltype(d)> df16;
  const size_t N = hn::Lanes(d);
  const size_t esize = ElementBytes(dtype);
  auto* o = static_cast<uint8_t*>(out);
  const auto bias = hn::Set(du32, 0x7fffu);
  const auto one = hn::Set(du32, 1u);
  // Dequantize N codes (u8 lanes) with the group's scale/offset and store them at element k.
  auto emit = [&](auto c8, const decltype(hn::Set(d, 0.0f))& vs,
                  const decltype(hn::Set(d, 0.0f))& voff, size_t k) {
    const auto c = hn::ConvertTo(d, hn::BitCast(di32, hn::PromoteTo(du32, c8)));
    const auto v = hn::Sub(hn::Mul(c, vs), voff);
    uint8_t* dst = o + k * esize;
    if (dtype == DType::kF32) {
      hn::StoreU(v, d, reinterpret_cast<float*>(dst));
    } else if (dtype == DType::kF16) {
      hn::StoreU(hn::BitCast(du16, hn::DemoteTo(df16, v)), du16, reinterpret_cast<uint16_t*>(dst));
    } else {  // bf16: the table's integer rounding (values here are finite)
      const auto b = hn::BitCast(du32, v);
      const auto r =
          hn::ShiftRight<16>(hn::Add(b, hn::Add(bias, hn::And(hn::ShiftRight<16>(b), one))));
      hn::StoreU(hn::DemoteTo(du16, hn::BitCast(di32, r)), du16, reinterpret_cast<uint16_t*>(dst));
    }
  };
  auto emit_scalar = [&](uint8_t code, float s, float off, size_t k) {
    const float p = static_cast<float>(code) * s;
    const float v = p - off;
    if (dtype == DType::kF32) {
      std::memcpy(o + 4 * k, &v, 4);
    } else {
      const uint16_t h = dtype == DType::kF16 ? F32ToF16Bits(v) : F32ToBF16Bits(v);
      std::memcpy(o + 2 * k, &h, 2);
    }
  };
#if HWY_TARGET != HWY_SCALAR
  // INT4, the common case: N bytes hold 2N codes; low and high nibbles are interleaved in
  // registers (element 2k is the low nibble of byte k), without a round trip through memory.
  if (bits == 4 && g % 2 == 0) {
    const auto mask = hn::Set(du8, 0x0f);
    for (size_t start = 0, gi = 0; start < n; start += g, ++gi) {
      const size_t len = std::min(g, n - start);
      const float s = scale[gi], off = offset[gi];
      const auto vs = hn::Set(d, s);
      const auto voff = hn::Set(d, off);
      size_t i = 0;
      for (; i + 2 * N <= len; i += 2 * N) {
        const auto b = hn::LoadU(du8, packed + (start + i) / 2);
        const auto lo = hn::And(b, mask), hi = hn::ShiftRight<4>(b);
        emit(hn::InterleaveLower(du8, lo, hi), vs, voff, start + i);
        emit(hn::InterleaveUpper(du8, lo, hi), vs, voff, start + i + N);
      }
      for (; i < len; ++i) {
        const size_t k = start + i;
        emit_scalar(static_cast<uint8_t>((packed[k / 2] >> (4 * (k % 2))) & 0x0f), s, off, k);
      }
    }
    return;
  }
#endif
  constexpr size_t kBlock = 256;
  alignas(64) uint8_t codes[kBlock];
  for (size_t b0 = 0; b0 < n; b0 += kBlock) {
    const size_t blk = std::min(kBlock, n - b0);
    UnpackCodesImpl(packed + b0 * static_cast<size_t>(bits) / 8, blk, bits, codes);
    for (size_t i = 0; i < blk;) {
      const size_t gi = (b0 + i) / g;
      const size_t seg_end = std::min(blk, std::min(n, (gi + 1) * g) - b0);
      const float s = scale[gi], off = offset[gi];
      const auto vs = hn::Set(d, s);
      const auto voff = hn::Set(d, off);
      for (; i + N <= seg_end; i += N) emit(hn::LoadU(du8, codes + i), vs, voff, b0 + i);
      for (; i < seg_end; ++i) emit_scalar(codes[i], s, off, b0 + i);
    }
  }
}

size_t CountNonFiniteImpl(const float* HWY_RESTRICT x, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t count = 0, i = 0;
  for (; i + N <= n; i += N) count += hn::CountTrue(d, hn::Not(hn::IsFinite(hn::LoadU(d, x + i))));
  return count + ref::CountNonFinite(x + i, n - i);
}

void ErrorSumsImpl(const float* HWY_RESTRICT x, const float* HWY_RESTRICT y, size_t n,
                   double* HWY_RESTRICT out) {
  constexpr size_t kParts = 8;  // the reference's partial sums, k = i mod 8
  const hn::ScalableTag<double> dd;
  const hn::Rebind<float, decltype(dd)> df;
  const size_t L = hn::Lanes(dd);
  if (L > kParts || kParts % L != 0) return ref::ErrorSums(x, y, n, out);
  using VD = hn::Vec<decltype(dd)>;
  // Partial sum k lives in lane k % L of vector k / L.
  constexpr size_t kMaxVecs = kParts;
  const size_t vecs = kParts / L;
  VD acc[4][kMaxVecs];
  for (auto& q : acc) {
    for (size_t v = 0; v < vecs; ++v) q[v] = hn::Zero(dd);
  }
  VD mx = hn::Zero(dd);
  size_t i = 0;
  for (; i + kParts <= n; i += kParts) {
    for (size_t v = 0; v < vecs; ++v) {
      const VD a = hn::PromoteTo(dd, hn::LoadU(df, x + i + v * L));
      const VD b = hn::PromoteTo(dd, hn::LoadU(df, y + i + v * L));
      const VD e = hn::Sub(a, b);
      acc[0][v] = hn::Add(acc[0][v], hn::Mul(e, e));
      acc[1][v] = hn::Add(acc[1][v], hn::Mul(a, a));
      acc[2][v] = hn::Add(acc[2][v], hn::Mul(b, b));
      acc[3][v] = hn::Add(acc[3][v], hn::Mul(a, b));
      const VD ae = hn::Abs(e);
      mx = hn::IfThenElse(hn::Lt(mx, ae), ae, mx);  // std::max(mx, |e|): NaN skipped
    }
  }
  HWY_ALIGN double parts[4][kParts];
  for (size_t q = 0; q < 4; ++q) {
    for (size_t v = 0; v < vecs; ++v) hn::Store(acc[q][v], dd, parts[q] + v * L);
  }
  HWY_ALIGN double lanes[kParts];
  hn::Store(mx, dd, lanes);
  double m = 0;
  for (size_t l = 0; l < L; ++l) m = std::max(m, lanes[l]);
  double rest[5];
  ref::ErrorSums(x + i, y + i, n - i, rest);
  for (size_t q = 0; q < 4; ++q) {
    double r = rest[q];
    for (size_t k = 0; k < kParts; ++k) r += parts[q][k];
    out[q] = r;
  }
  out[4] = std::max(m, rest[4]);
}

void AxpyImpl(float a, const float* HWY_RESTRICT x, size_t n, float* HWY_RESTRICT y) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  const auto av = hn::Set(d, a);
  size_t k = 0;
  for (; k + N <= n; k += N) {
    hn::StoreU(hn::Add(hn::LoadU(d, y + k), hn::Mul(av, hn::LoadU(d, x + k))), d, y + k);
  }
  ref::Axpy(a, x + k, n - k, y + k);
}

// The lanes are kRowLanes rows: one vector (or two halves) per column, no reduction, so each
// lane's arithmetic is the reference's in the same order.
void LanesAxpyImpl(const float* HWY_RESTRICT e, const float* HWY_RESTRICT u, size_t n,
                   float* HWY_RESTRICT w) {
  const hn::CappedTag<float, kRowLanes> d;
  const size_t N = hn::Lanes(d);
  if (kRowLanes % N != 0) return ref::LanesAxpy(e, u, n, w);
  for (size_t k = 0; k < n; ++k) {
    const auto uk = hn::Set(d, u[k]);
    float* wk = w + k * kRowLanes;
    for (size_t l = 0; l < kRowLanes; l += N) {
      hn::StoreU(hn::Sub(hn::LoadU(d, wk + l), hn::Mul(hn::LoadU(d, e + l), uk)), d, wk + l);
    }
  }
}

void LanesDotImpl(const double* HWY_RESTRICT h, const double* HWY_RESTRICT v, size_t n,
                  double* HWY_RESTRICT t) {
  const hn::CappedTag<double, kRowLanes> d;
  const size_t N = hn::Lanes(d);
  if (N < 2 || kRowLanes % N != 0 || kRowLanes / N > 4) return ref::LanesDot(h, v, n, t);
  using V = hn::Vec<decltype(d)>;
  V acc[4];
  const size_t parts = kRowLanes / N;
  for (size_t p = 0; p < parts; ++p) acc[p] = hn::LoadU(d, t + p * N);
  for (size_t k = 0; k < n; ++k) {
    const auto hk = hn::Set(d, h[k]);
    const double* vk = v + k * kRowLanes;
    for (size_t p = 0; p < parts; ++p)
      acc[p] = hn::Add(acc[p], hn::Mul(hk, hn::LoadU(d, vk + p * N)));
  }
  for (size_t p = 0; p < parts; ++p) hn::StoreU(acc[p], d, t + p * N);
}

void LanesDot4Impl(const double* const* HWY_RESTRICT h, const double* HWY_RESTRICT v, size_t n,
                   double* HWY_RESTRICT t) {
  const hn::CappedTag<double, kRowLanes> d;
  const size_t N = hn::Lanes(d);
  if (N < 2 || kRowLanes % N != 0 || kRowLanes / N > 4) return ref::LanesDot4(h, v, n, t);
  using V = hn::Vec<decltype(d)>;
  const size_t parts = kRowLanes / N;
  V acc[4][4];
  for (size_t a = 0; a < 4; ++a) {
    for (size_t p = 0; p < parts; ++p) acc[a][p] = hn::LoadU(d, t + a * kRowLanes + p * N);
  }
  for (size_t k = 0; k < n; ++k) {
    const double* vk = v + k * kRowLanes;
    V x[4];
    for (size_t p = 0; p < parts; ++p) x[p] = hn::LoadU(d, vk + p * N);
    for (size_t a = 0; a < 4; ++a) {
      const auto ha = hn::Set(d, h[a][k]);
      for (size_t p = 0; p < parts; ++p) acc[a][p] = hn::Add(acc[a][p], hn::Mul(ha, x[p]));
    }
  }
  for (size_t a = 0; a < 4; ++a) {
    for (size_t p = 0; p < parts; ++p) hn::StoreU(acc[a][p], d, t + a * kRowLanes + p * N);
  }
}

// Register-blocked: 4 rows x 2 vectors of columns stay in registers over the tile's rows, each
// element summed in the reference's order (r ascending, a multiply then an add).
void SumOuter4Impl(const float* HWY_RESTRICT xi, const float* HWY_RESTRICT xj, size_t stride,
                   size_t rows, size_t len, float* HWY_RESTRICT out, size_t out_stride) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t k = 0;
  for (; k + 2 * N <= len; k += 2 * N) {
    auto a0 = hn::Zero(d), a1 = hn::Zero(d), b0 = hn::Zero(d), b1 = hn::Zero(d);
    auto c0 = hn::Zero(d), c1 = hn::Zero(d), e0 = hn::Zero(d), e1 = hn::Zero(d);
    for (size_t r = 0; r < rows; ++r) {
      const float* xr = xj + r * stride + k;
      const float* ir = xi + r * stride;
      const auto v0 = hn::LoadU(d, xr), v1 = hn::LoadU(d, xr + N);
      const auto s0 = hn::Set(d, ir[0]), s1 = hn::Set(d, ir[1]);
      const auto s2 = hn::Set(d, ir[2]), s3 = hn::Set(d, ir[3]);
      a0 = hn::Add(a0, hn::Mul(s0, v0));
      a1 = hn::Add(a1, hn::Mul(s0, v1));
      b0 = hn::Add(b0, hn::Mul(s1, v0));
      b1 = hn::Add(b1, hn::Mul(s1, v1));
      c0 = hn::Add(c0, hn::Mul(s2, v0));
      c1 = hn::Add(c1, hn::Mul(s2, v1));
      e0 = hn::Add(e0, hn::Mul(s3, v0));
      e1 = hn::Add(e1, hn::Mul(s3, v1));
    }
    float* o = out + k;
    hn::StoreU(a0, d, o);
    hn::StoreU(a1, d, o + N);
    hn::StoreU(b0, d, o + out_stride);
    hn::StoreU(b1, d, o + out_stride + N);
    hn::StoreU(c0, d, o + 2 * out_stride);
    hn::StoreU(c1, d, o + 2 * out_stride + N);
    hn::StoreU(e0, d, o + 3 * out_stride);
    hn::StoreU(e1, d, o + 3 * out_stride + N);
  }
  for (; k + N <= len; k += N) {
    auto a0 = hn::Zero(d), b0 = hn::Zero(d), c0 = hn::Zero(d), e0 = hn::Zero(d);
    for (size_t r = 0; r < rows; ++r) {
      const auto v0 = hn::LoadU(d, xj + r * stride + k);
      const float* ir = xi + r * stride;
      a0 = hn::Add(a0, hn::Mul(hn::Set(d, ir[0]), v0));
      b0 = hn::Add(b0, hn::Mul(hn::Set(d, ir[1]), v0));
      c0 = hn::Add(c0, hn::Mul(hn::Set(d, ir[2]), v0));
      e0 = hn::Add(e0, hn::Mul(hn::Set(d, ir[3]), v0));
    }
    hn::StoreU(a0, d, out + k);
    hn::StoreU(b0, d, out + out_stride + k);
    hn::StoreU(c0, d, out + 2 * out_stride + k);
    hn::StoreU(e0, d, out + 3 * out_stride + k);
  }
  ref::SumOuter4(xi, xj + k, stride, rows, len - k, out + k, out_stride);
}

}  // namespace HWY_NAMESPACE
}  // namespace arrowquant::kernels
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace arrowquant::kernels {

HWY_EXPORT(GroupMinMaxImpl);
HWY_EXPORT(QuantizeGroupsImpl);
HWY_EXPORT(DequantizeGroupsImpl);
HWY_EXPORT(ToF32Impl);
HWY_EXPORT(PackCodesImpl);
HWY_EXPORT(CountNonFiniteImpl);
HWY_EXPORT(ErrorSumsImpl);
HWY_EXPORT(F32ToF16UpImpl);
HWY_EXPORT(FromF32Impl);
HWY_EXPORT(UnpackCodesImpl);
HWY_EXPORT(DequantizePackedImpl);
HWY_EXPORT(AxpyImpl);
HWY_EXPORT(SumOuter4Impl);
HWY_EXPORT(LanesAxpyImpl);
HWY_EXPORT(LanesDotImpl);
HWY_EXPORT(LanesDot4Impl);

void Axpy(float a, const float* x, size_t n, float* y) {
  HWY_DYNAMIC_DISPATCH(AxpyImpl)(a, x, n, y);
}
void SumOuter4(const float* xi, const float* xj, size_t stride, size_t rows, size_t len, float* out,
               size_t out_stride) {
  HWY_DYNAMIC_DISPATCH(SumOuter4Impl)(xi, xj, stride, rows, len, out, out_stride);
}
void LanesAxpy(const float* e, const float* u, size_t n, float* w) {
  HWY_DYNAMIC_DISPATCH(LanesAxpyImpl)(e, u, n, w);
}
void LanesDot(const double* h, const double* v, size_t n, double* t) {
  HWY_DYNAMIC_DISPATCH(LanesDotImpl)(h, v, n, t);
}
void LanesDot4(const double* const* h, const double* v, size_t n, double* t) {
  HWY_DYNAMIC_DISPATCH(LanesDot4Impl)(h, v, n, t);
}

void DequantizePacked(const uint8_t* packed, int bits, size_t n, size_t g, const float* scale,
                      const float* offset, DType dtype, void* out) {
  HWY_DYNAMIC_DISPATCH(DequantizePackedImpl)(packed, bits, n, g, scale, offset, dtype, out);
}

void UnpackCodes(const uint8_t* packed, size_t n, int bits, uint8_t* codes) {
  if (bits == 8) return ref::UnpackCodes(packed, n, bits, codes);
  HWY_DYNAMIC_DISPATCH(UnpackCodesImpl)(packed, n, bits, codes);
}

void FromF32(DType dtype, const float* x, size_t n, uint16_t* out) {
  HWY_DYNAMIC_DISPATCH(FromF32Impl)(dtype, x, n, out);
}

void F32ToF16Up(const float* x, size_t n, uint16_t* out) {
  HWY_DYNAMIC_DISPATCH(F32ToF16UpImpl)(x, n, out);
}

void PackCodes(const uint8_t* codes, size_t n, int bits, uint8_t* out) {
  if (bits == 2 || bits == 4) return HWY_DYNAMIC_DISPATCH(PackCodesImpl)(codes, n, bits, out);
  ref::PackCodes(codes, n, bits, out);
}
size_t CountNonFinite(const float* x, size_t n) {
  return HWY_DYNAMIC_DISPATCH(CountNonFiniteImpl)(x, n);
}
void ErrorSums(const float* x, const float* y, size_t n, double* out) {
  HWY_DYNAMIC_DISPATCH(ErrorSumsImpl)(x, y, n, out);
}

void GroupMinMax(const float* x, size_t n, size_t g, float* mn, float* mx) {
  HWY_DYNAMIC_DISPATCH(GroupMinMaxImpl)(x, n, g, mn, mx);
}
void QuantizeGroups(const float* x, size_t n, size_t g, const float* inv_scale, const float* offset,
                    float qmax, uint8_t* codes) {
  HWY_DYNAMIC_DISPATCH(QuantizeGroupsImpl)(x, n, g, inv_scale, offset, qmax, codes);
}
void DequantizeGroups(const uint8_t* codes, size_t n, size_t g, const float* scale,
                      const float* offset, float* out) {
  HWY_DYNAMIC_DISPATCH(DequantizeGroupsImpl)(codes, n, g, scale, offset, out);
}
void ToF32(DType dtype, const void* src, size_t n, float* out) {
  if (dtype == DType::kF32) {
    std::memcpy(out, src, n * sizeof(float));
    return;
  }
  HWY_DYNAMIC_DISPATCH(ToF32Impl)(dtype, src, n, out);
}

const char* ActiveTarget() {
  const int64_t usable = hwy::SupportedTargets() & HWY_TARGETS;
  return hwy::TargetName(usable & -usable);
}

}  // namespace arrowquant::kernels
#endif  // HWY_ONCE
