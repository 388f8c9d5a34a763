// Packing golden bytes, and every compiled SIMD target against the scalar reference.
#include <gtest/gtest.h>
#include <rapidcheck.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "arrowquant/dtype.h"
#include "arrowquant/quantize.h"
#include "hwy/targets.h"
#include "kernels/grid_search.h"
#include "kernels/pack.h"
#include "kernels/row_kernels.h"

namespace arrowquant::kernels {
namespace {

std::vector<uint8_t> Pack(const std::vector<uint8_t>& codes, int bits) {
  std::vector<uint8_t> out(PackedBytes(codes.size(), bits), 0xAA);
  PackCodes(codes.data(), codes.size(), bits, out.data());
  return out;
}

TEST(Pack, GoldenBytes) {
  EXPECT_EQ(Pack({1, 2, 3}, 4), (std::vector<uint8_t>{0x21, 0x03}));
  EXPECT_EQ(Pack({1, 2, 3, 0, 1}, 2), (std::vector<uint8_t>{0x39, 0x01}));
  EXPECT_EQ(Pack({7, 255}, 8), (std::vector<uint8_t>{7, 255}));
  // 6-bit: 1 | 2 << 6 | 3 << 12 | 4 << 18 = 0x103081, little-endian.
  EXPECT_EQ(Pack({1, 2, 3, 4}, 6), (std::vector<uint8_t>{0x81, 0x30, 0x10}));
  EXPECT_EQ(Pack({63}, 6), (std::vector<uint8_t>{0x3f}));
  // INT3: 1 | 2 << 3 | 7 << 6 | 5 << 9 = 0xbd1 (element 2 straddles bytes 0 and 1).
  EXPECT_EQ(Pack({1, 2, 7, 5}, 3), (std::vector<uint8_t>{0xd1, 0x0b}));
  EXPECT_EQ(Pack({7, 7, 7, 7, 7, 7, 7, 7}, 3), (std::vector<uint8_t>{0xff, 0xff, 0xff}));
}

TEST(Pack, RoundTripProperty) {
  for (int bits : {2, 3, 4, 6, 8}) {
    const bool ok = rc::check("unpack(pack(codes)) == codes", [bits](std::vector<uint8_t> codes) {
      for (auto& c : codes) c &= static_cast<uint8_t>((1u << bits) - 1u);
      const auto packed = Pack(codes, bits);
      RC_ASSERT(packed.size() == (codes.size() * bits + 7) / 8);
      std::vector<uint8_t> back(codes.size());
      UnpackCodes(packed.data(), codes.size(), bits, back.data());
      RC_ASSERT(back == codes);
      if (!codes.empty() && (codes.size() * bits) % 8) {  // padding bits are zero
        RC_ASSERT((packed.back() >> ((codes.size() * bits) % 8)) == 0);
      }
    });
    EXPECT_TRUE(ok) << bits;
  }
}

// Each of `count` groups' minimum and maximum (group j: x[j * n, (j + 1) * n)).
std::pair<std::vector<float>, std::vector<float>> GroupExtremes(const std::vector<float>& x,
                                                                size_t n, size_t count) {
  std::vector<float> mn(count), mx(count);
  for (size_t j = 0; j < count; ++j) {
    mn[j] = *std::min_element(x.begin() + j * n, x.begin() + (j + 1) * n);
    mx[j] = *std::max_element(x.begin() + j * n, x.begin() + (j + 1) * n);
  }
  return {mn, mx};
}

class PerTarget : public ::testing::Test {
 protected:
  void TearDown() override { hwy::SetSupportedTargetsForTest(0); }
};

// The error-minimizing grid's search runs groups side by side on SIMD targets; every group's
// scale and offset must be the reference's, bit for bit, whatever the vector width.
TEST_F(PerTarget, GridSearchMatchesReferenceBitForBit) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::student_t_distribution<float> heavy(3.0f);
  int tested = 0;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    for (size_t n : {8u, 12u, 32u, 33u, 64u, 100u, 256u}) {
      for (size_t count : {1u, 3u, 8u, 17u, 40u}) {
        for (float qmax : {3.0f, 7.0f, 15.0f, 255.0f}) {
          std::vector<float> x(n * count);
          for (size_t i = 0; i < x.size(); ++i) {
            x[i] = (i / n) % 5 == 1 ? 0.01f * heavy(rng) : normal(rng);
          }
          // Edge groups: constant, all-negative, all-zero (no range), tiny and huge values.
          if (count > 2) std::fill(x.begin() + n, x.begin() + 2 * n, 0.25f);
          if (count > 3) {
            for (size_t i = 2 * n; i < 3 * n; ++i) x[i] = -std::fabs(x[i]) - 1e-3f;
          }
          if (count > 8) std::fill(x.begin() + 7 * n, x.begin() + 8 * n, 0.0f);
          if (count > 10) {
            for (size_t i = 9 * n; i < 10 * n; ++i) x[i] *= 1e-30f;
          }
          if (count > 12) {  // squares beyond float's range: residuals that are not finite
            for (size_t i = 11 * n; i < 12 * n; ++i) x[i] *= 1e21f;
          }
          const auto [mn, mx] = GroupExtremes(x, n, count);
          std::vector<float> s(count), m(count), rs(count), rm(count);
          SearchAsymGroups(x.data(), n, count, mn.data(), mx.data(), qmax, s.data(), m.data());
          ref::SearchAsymGroups(x.data(), n, count, mn.data(), mx.data(), qmax, rs.data(),
                                rm.data());
          for (size_t j = 0; j < count; ++j) {
            ASSERT_EQ(s[j], rs[j]) << "n " << n << " group " << j << " qmax " << qmax;
          }
          ASSERT_EQ(0, std::memcmp(s.data(), rs.data(), count * 4)) << n << " " << count;
          ASSERT_EQ(0, std::memcmp(m.data(), rm.data(), count * 4)) << n << " " << count;
          ++tested;
        }
      }
    }
  }
  EXPECT_GT(tested, 0);
}

// The symmetric search (float scales, f16 or f32, extremes kept or not) on every target against
// the reference, bit for bit: scales and their f16 bits.
TEST_F(PerTarget, SymmetricSearchMatchesReferenceBitForBit) {
  std::mt19937 rng(12);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::student_t_distribution<float> heavy(3.0f);
  int tested = 0;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    for (size_t n : {8u, 16u, 32u, 33u, 64u}) {
      for (size_t count : {1u, 5u, 16u, 23u}) {
        for (float bias : {2.0f, 4.0f, 8.0f, 16.0f, 128.0f}) {
          std::vector<float> x(n * count);
          for (size_t i = 0; i < x.size(); ++i) {
            x[i] = (i / n) % 4 == 1 ? 0.01f * heavy(rng) : normal(rng);
          }
          // Edge groups: constant, all-zero, tiny (f16 subnormal scales), huge (f16 overflow).
          if (count > 2) std::fill(x.begin() + n, x.begin() + 2 * n, -0.25f);
          if (count > 3) std::fill(x.begin() + 2 * n, x.begin() + 3 * n, 0.0f);
          if (count > 4) {
            for (size_t i = 3 * n; i < 4 * n; ++i) x[i] *= 1e-4f;
          }
          if (count > 5) {
            for (size_t i = 4 * n; i < 5 * n; ++i) x[i] *= 1e8f;
          }
          const auto [mn, mx] = GroupExtremes(x, n, count);
          for (bool f16 : {true, false}) {
            for (bool keep : {true, false}) {
              const SymSearch p{bias, f16, keep};
              std::vector<float> s(count, -1), rs(count, -2);
              std::vector<uint16_t> b(count, 1), rb(count, 2);
              SearchSymGroups(x.data(), n, count, mn.data(), mx.data(), p, s.data(), b.data());
              ref::SearchSymGroups(x.data(), n, count, mn.data(), mx.data(), p, rs.data(),
                                   rb.data());
              ASSERT_EQ(0, std::memcmp(s.data(), rs.data(), count * 4))
                  << "n " << n << " count " << count << " bias " << bias << " f16 " << f16;
              if (f16) ASSERT_EQ(b, rb) << n << " " << count << " " << bias;
              ++tested;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(tested, 0);
}

// The coded-scale neighbour search on every target against the reference: codes at the edges of
// the code range (candidates outside it skipped), symmetric and asymmetric, batches of every
// length (short ones padded onto the vector).
TEST_F(PerTarget, CodedNeighboursMatchReference) {
  std::mt19937 rng(13);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  int tested = 0;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    for (size_t n : {8u, 32u, 33u, 64u}) {
      for (size_t count : {1u, 5u, 16u, 23u}) {
        for (int cmax : {63, 127}) {
          for (bool sym : {false, true}) {
            std::vector<float> x(n * count);
            for (auto& v : x) v = normal(rng);
            std::vector<int> ls0(count), lm0(count);
            float top = 0;
            for (float v : x) top = std::max(top, std::fabs(v));
            const float d = 2 * top / 15.0f / static_cast<float>(cmax) * 1.3f;
            const float dmin = top / static_cast<float>(cmax) * 1.1f;
            for (size_t j = 0; j < count; ++j) {
              ls0[j] = j % 4 == 0 ? 0 : j % 4 == 1 ? cmax : static_cast<int>(rng() % (cmax + 1));
              lm0[j] = sym ? 0 : j % 3 == 0 ? cmax : static_cast<int>(rng() % (cmax + 1));
            }
            const CodedGrid grid{d, dmin, cmax, sym, 8.0f, 15.0f};
            std::vector<uint8_t> ls(count, 0xAA), lm(count, 0xAA), rls(count, 0xAA),
                rlm(count, 0xAA);
            CodedNeighbours(x.data(), n, count, ls0.data(), lm0.data(), grid, ls.data(), lm.data());
            ref::CodedNeighbours(x.data(), n, count, ls0.data(), lm0.data(), grid, rls.data(),
                                 rlm.data());
            ASSERT_EQ(ls, rls) << n << " " << count << " " << cmax << " " << sym;
            ASSERT_EQ(lm, rlm) << n << " " << count << " " << cmax << " " << sym;
            for (size_t j = 0; j < count; ++j) {
              EXPECT_LE(std::abs(int{ls[j]} - ls0[j]), 1);
              EXPECT_LE(int{ls[j]}, cmax);
            }
            ++tested;
          }
        }
      }
    }
  }
  EXPECT_GT(tested, 0);
}

TEST_F(PerTarget, KernelsMatchReferenceBitForBit) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  const auto targets = hwy::SupportedAndGeneratedTargets();
  ASSERT_FALSE(targets.empty());
  int tested = 0;
  std::string names;
  for (int64_t target : targets) {
    names += std::string(names.empty() ? "" : ", ") + hwy::TargetName(target);
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    for (size_t n : {1u, 7u, 31u, 32u, 33u, 100u, 256u, 1000u}) {
      for (size_t g : {size_t{32}, size_t{64}, size_t{128}, size_t{256}, n}) {
        std::vector<float> x(n);
        for (auto& v : x) v = normal(rng);
        if (n > 3) x[3] = 0.0f, x[2] = -0.0f;
        const size_t groups = (n + g - 1) / g;
        std::vector<float> mn(groups), mx(groups), rmn(groups), rmx(groups);
        GroupMinMax(x.data(), n, g, mn.data(), mx.data());
        ref::GroupMinMax(x.data(), n, g, rmn.data(), rmx.data());
        for (size_t i = 0; i < groups; ++i) {
          ASSERT_EQ(mn[i], rmn[i]);
          ASSERT_EQ(mx[i], rmx[i]);
        }
        std::vector<float> inv(groups), off(groups), sc(groups);
        for (size_t i = 0; i < groups; ++i) {
          sc[i] = (rmx[i] - rmn[i]) / 15.0f;
          inv[i] = sc[i] > 0 ? 1.0f / sc[i] : 0.0f;
          off[i] = -rmn[i] + 0.0f;
        }
        std::vector<uint8_t> q(n), rq(n);
        QuantizeGroups(x.data(), n, g, inv.data(), off.data(), 15.0f, q.data());
        ref::QuantizeGroups(x.data(), n, g, inv.data(), off.data(), 15.0f, rq.data());
        ASSERT_EQ(q, rq);
        for (int bits : {2, 3, 4, 6, 7, 8}) {
          std::vector<uint8_t> c(n), p(PackedBytes(n, bits)), rp(p.size());
          for (size_t i = 0; i < n; ++i) c[i] = q[i] & ((1 << bits) - 1);
          PackCodes(c.data(), n, bits, p.data());
          ref::PackCodes(c.data(), n, bits, rp.data());
          ASSERT_EQ(p, rp) << bits;
          std::vector<uint8_t> u(n), ru(n);
          UnpackCodes(p.data(), n, bits, u.data());
          ref::UnpackCodes(p.data(), n, bits, ru.data());
          ASSERT_EQ(u, ru) << bits;
          ASSERT_EQ(u, c) << bits;
          for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
            if (!IsWeightWidth(bits)) break;  // weights are 2/3/4/8-bit
            const size_t es = ElementBytes(dt);
            std::vector<uint8_t> o(n * es + 1), ro(n * es + 1);  // +1: write unaligned
            DequantizePacked(p.data(), bits, n, g, sc.data(), off.data(), dt, o.data() + 1);
            ref::DequantizePacked(p.data(), bits, n, g, sc.data(), off.data(), dt, ro.data() + 1);
            ASSERT_EQ(o, ro) << bits << " " << Traits(dt).safetensors_name;
          }
        }
        if (n > 5) x[5] = std::numeric_limits<float>::quiet_NaN();
        if (n > 6) x[n - 1] = -std::numeric_limits<float>::infinity();
        ASSERT_EQ(CountNonFinite(x.data(), n), ref::CountNonFinite(x.data(), n));
        ASSERT_EQ(CountNonFinite(x.data(), n), (n > 5) + (n > 6));
        std::vector<float> y(n), ry(n);
        DequantizeGroups(q.data(), n, g, sc.data(), off.data(), y.data());
        ref::DequantizeGroups(q.data(), n, g, sc.data(), off.data(), ry.data());
        ASSERT_EQ(0, std::memcmp(y.data(), ry.data(), n * 4));
        double es[5], res[5];  // x holds a NaN and an Inf here: the max skips the NaN
        ErrorSums(x.data(), y.data(), n, es);
        ref::ErrorSums(x.data(), y.data(), n, res);
        ASSERT_EQ(0, std::memcmp(es, res, sizeof es)) << n;
      }
    }
    // Round-up f32 -> f16 on every non-negative f16 value and its f32 neighbours.
    std::vector<float> up;
    for (uint32_t h = 0; h < 0x7c00; ++h) {
      const float v = F16BitsToF32(static_cast<uint16_t>(h));
      up.insert(up.end(), {v, std::nextafter(v, 0.0f), std::nextafter(v, 1e9f)});
    }
    up.push_back(1e30f);
    std::vector<uint16_t> u(up.size()), ru(up.size());
    F32ToF16Up(up.data(), up.size(), u.data());
    ref::F32ToF16Up(up.data(), up.size(), ru.data());
    ASSERT_EQ(u, ru);
    // f32 -> f16 / bf16 on every 16-bit value, midpoints, NaNs and overflow.
    std::vector<float> fx;
    for (uint32_t h = 0; h < 65536; ++h) {
      const float v = F16BitsToF32(static_cast<uint16_t>(h));
      fx.insert(fx.end(), {v, std::nextafter(v, 0.0f), BF16BitsToF32(static_cast<uint16_t>(h))});
    }
    fx.push_back(1e30f);
    for (DType dt : {DType::kF16, DType::kBF16}) {
      std::vector<uint16_t> o(fx.size()), ro(fx.size());
      FromF32(dt, fx.data(), fx.size(), o.data());
      ref::FromF32(dt, fx.data(), fx.size(), ro.data());
      ASSERT_EQ(o, ro);
    }
    // f16 / bf16 -> f32 for every 16-bit pattern that is not a NaN.
    std::vector<uint16_t> all;
    for (uint32_t h = 0; h < 65536; ++h) {
      if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) continue;
      all.push_back(static_cast<uint16_t>(h));
    }
    std::vector<float> a(all.size()), b(all.size());
    ToF32(DType::kF16, all.data(), all.size(), a.data());
    ref::ToF32(DType::kF16, all.data(), all.size(), b.data());
    ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
    ToF32(DType::kBF16, all.data(), all.size(), a.data());
    ref::ToF32(DType::kBF16, all.data(), all.size(), b.data());
    ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * 4));
    // The GPTQ sweep's and the output error's linear algebra: same bits as the reference.
    for (size_t n : {1u, 3u, 17u, 300u}) {  // (n = 0: the loops do nothing)
      std::vector<float> xs(n), ys(n), e(kRowLanes), w(n * kRowLanes);
      std::vector<double> hd(n), vd(n * kRowLanes);
      for (auto& v : xs) v = normal(rng);
      for (auto& v : ys) v = normal(rng);
      for (auto& v : e) v = normal(rng);
      for (auto& v : w) v = normal(rng);
      for (auto& v : hd) v = normal(rng);
      for (auto& v : vd) v = normal(rng);
      std::vector<float> y1 = ys, y2 = ys, w1 = w, w2 = w;
      Axpy(0.37f, xs.data(), n, y1.data());
      ref::Axpy(0.37f, xs.data(), n, y2.data());
      ASSERT_EQ(0, std::memcmp(y1.data(), y2.data(), n * 4)) << n;
      LanesAxpy(e.data(), xs.data(), n, w1.data());
      ref::LanesAxpy(e.data(), xs.data(), n, w2.data());
      ASSERT_EQ(0, std::memcmp(w1.data(), w2.data(), w.size() * 4)) << n;
      double t1[kRowLanes] = {0.5}, t2[kRowLanes] = {0.5};
      LanesDot(hd.data(), vd.data(), n, t1);
      ref::LanesDot(hd.data(), vd.data(), n, t2);
      ASSERT_EQ(0, std::memcmp(t1, t2, sizeof t1)) << n;
      const size_t stride = n / 4;  // rows of h overlap: any rows are allowed
      const double* rows4[4] = {hd.data(), hd.data() + stride, hd.data() + 2 * stride,
                                hd.data() + 3 * stride};
      std::vector<double> q1(4 * kRowLanes, 0.25), q2 = q1;
      LanesDot4(rows4, vd.data(), n - 3 * stride, q1.data());
      ref::LanesDot4(rows4, vd.data(), n - 3 * stride, q2.data());
      ASSERT_EQ(0, std::memcmp(q1.data(), q2.data(), q1.size() * 8)) << n;
      // A tile of 5 rows x (n + 4) columns; four H rows from column 1 against n columns from 4.
      std::vector<float> tile(5 * (n + 4));
      for (auto& v : tile) v = normal(rng);
      std::vector<float> o1(4 * (n + 1), -1.0f), o2 = o1;
      SumOuter4(tile.data() + 1, tile.data() + 4, n + 4, 5, n, o1.data(), n + 1);
      ref::SumOuter4(tile.data() + 1, tile.data() + 4, n + 4, 5, n, o2.data(), n + 1);
      ASSERT_EQ(0, std::memcmp(o1.data(), o2.data(), o1.size() * 4)) << n;
    }
    ++tested;
  }
  hwy::SetSupportedTargetsForTest(0);
  RecordProperty("targets_tested", names);
  std::printf("SIMD targets checked against the reference: %s (dispatch picks %s)\n", names.c_str(),
              ActiveTarget());
}

}  // namespace
}  // namespace arrowquant::kernels
