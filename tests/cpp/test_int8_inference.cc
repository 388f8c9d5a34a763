// Integer inference (arrowquant/int8_inference.h): every SIMD target gives the reference's bits;
// the result is the float simulation (fake-quantized input times the dequantized weight, here
// in double) up to float rounding; the activation rounding is exactly fake quantization's.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "arrowquant/int8_inference.h"
#include "arrowquant/quantize.h"
#include "hwy/targets.h"
#include "kernels/int8_gemm.h"

namespace arrowquant {
namespace {

struct Case {
  int bits;
  int group;
  Scheme scheme;
  ScaleStorage scales;
};

std::vector<Case> Cases() {
  std::vector<Case> out;
  for (int bits : {8, 4, 2}) {
    for (int group : {32, 64, 128, 256, 0}) {
      out.push_back({bits, group, Scheme::kAsymmetric, ScaleStorage::kCoded});
      out.push_back({bits, group, Scheme::kSymmetric, ScaleStorage::kF16});
    }
  }
  out.push_back({8, 128, Scheme::kAsymmetric, ScaleStorage::kF16});
  out.push_back({4, 32, Scheme::kAsymmetric, ScaleStorage::kF32});
  return out;
}

QuantizedTensor RandomWeight(const Case& c, uint64_t rows, uint64_t cols, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.01f, 0.05f);
  std::vector<float> w(rows * cols);
  for (auto& v : w) v = normal(rng);
  QuantSpec spec;
  spec.bits = c.bits;
  spec.group_size = c.group;
  spec.scheme = c.scheme;
  spec.scales = c.scales;
  spec.grid = Grid::kMinMax;
  const TensorView view{"w", DType::kF32, {rows, cols}, std::as_bytes(std::span<const float>(w))};
  auto q = Quantize(view, spec);
  EXPECT_TRUE(q.ok()) << q.status().ToString();
  return std::move(q).value();
}

std::vector<float> Dequantized(const QuantizedTensor& q) {
  std::vector<float> w(q.rows * q.cols);
  EXPECT_TRUE(Dequantize(q, DType::kF32, std::as_writable_bytes(std::span<float>(w))).ok());
  return w;
}

float FakeQuant(float x, ActGrid g) {
  const float q = std::clamp(std::nearbyint(x / g.scale) + g.zero, 0.0f, 255.0f);
  return (q - g.zero) * g.scale;
}

class PerTarget : public ::testing::Test {
 protected:
  void TearDown() override { hwy::SetSupportedTargetsForTest(0); }
};

TEST_F(PerTarget, LinearMatchesTheFloatSimulationAndEveryTargetTheReference) {
  std::mt19937 rng(3);
  std::normal_distribution<float> act(0.3f, 1.0f);
  const ActGrid grid{0.021f, 97.0f};
  for (const Case& c : Cases()) {
    for (uint64_t rows : {1u, 16u, 37u}) {
      for (uint64_t cols : {4u, 27u, 256u, 300u}) {
        SCOPED_TRACE(testing::Message()
                     << c.bits << "-bit g" << c.group << " sym " << (c.scheme == Scheme::kSymmetric)
                     << " " << rows << "x" << cols);
        const QuantizedTensor q = RandomWeight(c, rows, cols, rng);
        auto w = Int8Weight::Make(q.View(), QuantOptions{2});
        ASSERT_TRUE(w.ok()) << w.status().ToString();
        const std::vector<float> wd = Dequantized(q);
        for (uint64_t m : {1u, 5u, 6u, 13u}) {
          std::vector<float> x(m * cols), bias(rows);
          for (auto& v : x) v = act(rng);
          for (auto& v : bias) v = act(rng);
          // The float simulation in double, and the scale of its terms for the tolerance.
          std::vector<double> want(m * rows), mag(m * rows);
          for (uint64_t i = 0; i < m; ++i) {
            for (uint64_t n = 0; n < rows; ++n) {
              double s = bias[n], a = std::fabs(bias[n]);
              for (uint64_t k = 0; k < cols; ++k) {
                const double xf = FakeQuant(x[i * cols + k], grid);
                s += xf * wd[n * cols + k];
                a += std::fabs(xf * wd[n * cols + k]) +
                     std::fabs(wd[n * cols + k]) * 255 * grid.scale;
              }
              want[i * rows + n] = s;
              mag[i * rows + n] = a;
            }
          }
          std::vector<float> first;
          int targets = 0;
          for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
            hwy::SetSupportedTargetsForTest(target);
            SCOPED_TRACE(hwy::TargetName(target));
            std::vector<float> y(m * rows, NAN);
            ASSERT_TRUE(Int8Linear(x, m, **w, grid, bias, y, QuantOptions{3}).ok());
            if (first.empty()) {
              first = y;
              for (size_t i = 0; i < y.size(); ++i) {
                ASSERT_NEAR(y[i], want[i], 2e-6 * mag[i] + 1e-6) << i;
              }
            } else {
              ASSERT_EQ(0, std::memcmp(first.data(), y.data(), y.size() * sizeof(float)));
            }
            ++targets;
          }
          hwy::SetSupportedTargetsForTest(0);
          EXPECT_GE(targets, 1);
        }
      }
    }
  }
}

TEST(Int8Gemm, IntegerSumsAreExact) {
  // One group, unit scales, zero offsets and zero-point: y is the integer dot product itself.
  const size_t n = 20, k = 256, m = 7;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> wq(-128, 127), xq(0, 255);
  const size_t k4s = k / 4, panels = 2;
  std::vector<int8_t> w(panels * k4s * 64, 0);
  std::vector<std::vector<int>> dense(n, std::vector<int>(k));
  for (size_t r = 0; r < n; ++r) {
    for (size_t c = 0; c < k; ++c) {
      dense[r][c] = wq(rng);
      w[((r / 16 * k4s + c / 4) * 16 + r % 16) * 4 + c % 4] = static_cast<int8_t>(dense[r][c]);
    }
  }
  std::vector<float> scale(panels * 16, 1.0f), bias_r(panels * 16, 0.0f), col(panels * 16, 0.0f);
  kernels::Int8Panels p{w.data(), scale.data(), bias_r.data(), col.data(), n, k4s, 1, k4s};
  std::vector<uint8_t> x(m * k);
  for (auto& v : x) v = static_cast<uint8_t>(xq(rng));
  std::vector<float> rsum(m, 0.0f), y(m * n);
  kernels::Int8Gemm(x.data(), k, 4, rsum.data(), m, p, 1.0f, 0.0f, nullptr, y.data(), n);
  for (size_t i = 0; i < m; ++i) {
    for (size_t r = 0; r < n; ++r) {
      int64_t s = 0;
      for (size_t c = 0; c < k; ++c) s += int64_t{dense[r][c]} * x[i * k + c];
      ASSERT_EQ(static_cast<double>(y[i * n + r]), static_cast<double>(s));
    }
  }
}

TEST_F(PerTarget, ActivationRoundingIsFakeQuantization) {
  std::mt19937 rng(9);
  std::normal_distribution<float> act(0.0f, 3.0f);
  std::vector<float> x(1003);
  for (auto& v : x) v = act(rng);
  x[0] = NAN;
  x[1] = INFINITY;
  x[2] = -INFINITY;
  x[3] = 0.5f * 0.05f;  // exact ties: round half to even
  x[4] = 1.5f * 0.05f;
  for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(hwy::TargetName(target));
    std::vector<uint8_t> codes(x.size());
    kernels::QuantizeActivations(x.data(), x.size(), 0.05f, 120.0f, codes.data());
    EXPECT_EQ(codes[0], 0);
    EXPECT_EQ(codes[1], 255);
    EXPECT_EQ(codes[2], 0);
    for (size_t i = 3; i < x.size(); ++i) {
      const float want = std::clamp(std::nearbyint(x[i] / 0.05f) + 120.0f, 0.0f, 255.0f);
      ASSERT_EQ(codes[i], static_cast<uint8_t>(want)) << i;
    }
  }
}

TEST_F(PerTarget, Conv2dMatchesTheFloatSimulation) {
  std::mt19937 rng(4);
  std::normal_distribution<float> act(0.2f, 1.0f);
  const ActGrid grid{0.03f, 60.0f};
  struct Geo {
    uint64_t c, h, w, kh, kw, stride, pad, dil, out;
  };
  for (const Geo& g : {Geo{3, 9, 7, 3, 3, 1, 1, 1, 20}, Geo{8, 8, 8, 1, 1, 1, 0, 1, 33},
                       Geo{5, 11, 10, 3, 3, 2, 1, 1, 16}, Geo{4, 9, 9, 3, 3, 1, 2, 2, 17},
                       Geo{3, 5, 37, 3, 3, 1, 1, 1, 9}, Geo{2, 4, 33, 3, 3, 2, 0, 1, 5}}) {
    for (const Case& c : {Case{8, 32, Scheme::kAsymmetric, ScaleStorage::kCoded},
                          Case{4, 0, Scheme::kSymmetric, ScaleStorage::kF16}}) {
      Conv2dShape s;
      s.batch = 2;
      s.channels = g.c;
      s.height = g.h;
      s.width = g.w;
      s.kernel_h = g.kh;
      s.kernel_w = g.kw;
      s.stride_h = s.stride_w = g.stride;
      s.pad_h = s.pad_w = g.pad;
      s.dilation_h = s.dilation_w = g.dil;
      const uint64_t cols = g.c * g.kh * g.kw;
      const QuantizedTensor q = RandomWeight(c, g.out, cols, rng);
      auto w = Int8Weight::Make(q.View());
      ASSERT_TRUE(w.ok());
      const std::vector<float> wd = Dequantized(q);
      std::vector<float> x(s.batch * g.c * g.h * g.w), bias(g.out);
      for (auto& v : x) v = act(rng);
      for (auto& v : bias) v = act(rng);
      const uint64_t oh = s.out_h(), ow = s.out_w();
      std::vector<float> first;
      for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
        hwy::SetSupportedTargetsForTest(target);
        SCOPED_TRACE(hwy::TargetName(target));
        std::vector<float> y(s.batch * g.out * oh * ow, NAN);
        ASSERT_TRUE(Int8Conv2d(x, s, **w, grid, bias, y, QuantOptions{2}).ok());
        if (!first.empty()) {
          ASSERT_EQ(0, std::memcmp(first.data(), y.data(), y.size() * sizeof(float)));
          continue;
        }
        first = y;
        for (uint64_t b = 0; b < s.batch; ++b) {
          for (uint64_t o = 0; o < g.out; ++o) {
            for (uint64_t py = 0; py < oh; ++py) {
              for (uint64_t px = 0; px < ow; ++px) {
                double acc = bias[o], mag = std::fabs(bias[o]);
                for (uint64_t ch = 0; ch < g.c; ++ch) {
                  for (uint64_t i = 0; i < g.kh; ++i) {
                    for (uint64_t j = 0; j < g.kw; ++j) {
                      const int64_t iy = int64_t(py * g.stride + i * g.dil) - int64_t(g.pad);
                      const int64_t ix = int64_t(px * g.stride + j * g.dil) - int64_t(g.pad);
                      const double wv = wd[o * cols + (ch * g.kh + i) * g.kw + j];
                      mag += std::fabs(wv) * 255 * grid.scale;
                      if (iy < 0 || ix < 0 || iy >= int64_t(g.h) || ix >= int64_t(g.w)) continue;
                      const double xv = FakeQuant(
                          x[((b * g.c + ch) * g.h + uint64_t(iy)) * g.w + uint64_t(ix)], grid);
                      acc += xv * wv;
                    }
                  }
                }
                const float got = y[((b * g.out + o) * oh + py) * ow + px];
                ASSERT_NEAR(got, acc, 2e-6 * mag + 1e-6);
              }
            }
          }
        }
      }
      hwy::SetSupportedTargetsForTest(0);
    }
  }
}

TEST_F(PerTarget, PatchGatherMatchesTheReference) {
  std::mt19937 rng(12);
  std::uniform_int_distribution<int> byte(0, 255);
  for (size_t channels : {1u, 3u, 7u}) {
    for (size_t k : {1u, 3u}) {
      kernels::PatchShape s;
      s.channels = channels;
      s.kh = s.kw = k;
      s.dil_h = k == 3 ? 2 : 1;
      s.hp = 9 + 2 * s.dil_h;
      s.wp = 40 + 2 * s.dil_h;
      s.k4s = (channels * k * k + 3) / 4 + 1;  // one quad more than needed: zeros
      std::vector<uint8_t> xp(channels * s.hp * s.wp + 64);
      for (auto& v : xp) v = static_cast<uint8_t>(byte(rng));
      for (size_t len : {1u, 15u, 16u, 37u}) {
        const size_t plane = 4 * 40;
        std::vector<uint8_t> want(s.k4s * plane, 0xEE);
        kernels::ref::GatherQuads(xp.data(), s, 3 * s.wp + 40 - len, len, want.data(), plane);
        for (int64_t target : hwy::SupportedAndGeneratedTargets()) {
          hwy::SetSupportedTargetsForTest(target);
          SCOPED_TRACE(hwy::TargetName(target));
          std::vector<uint8_t> got(s.k4s * plane, 0xEE);
          kernels::GatherQuads(xp.data(), s, 3 * s.wp + 40 - len, len, got.data(), plane);
          ASSERT_EQ(want, got) << channels << " " << k << " " << len;
        }
        hwy::SetSupportedTargetsForTest(0);
      }
    }
  }
}

TEST(Int8Inference, BadSizesAreErrors) {
  std::mt19937 rng(1);
  const QuantizedTensor q =
      RandomWeight({8, 32, Scheme::kAsymmetric, ScaleStorage::kCoded}, 4, 64, rng);
  auto w = Int8Weight::Make(q.View());
  ASSERT_TRUE(w.ok());
  std::vector<float> x(2 * 64), y(2 * 4), bias(3);
  EXPECT_EQ(Int8Linear(x, 3, **w, {}, {}, y).code(), StatusCode::kSizeMismatch);
  EXPECT_EQ(Int8Linear(x, 2, **w, {}, bias, y).code(), StatusCode::kSizeMismatch);
  Conv2dShape s;
  s.channels = 7;
  s.height = s.width = 4;
  EXPECT_EQ(Int8Conv2d(x, s, **w, {}, {}, y).code(), StatusCode::kSizeMismatch);
  s.channels = 64;
  s.height = s.width = 1;
  s.pad_h = 1;
  std::vector<float> x1(64), y1(4 * 3);
  EXPECT_EQ(Int8Conv2d(x1, s, **w, ActGrid{1.0f, 300.0f}, {}, y1).code(), StatusCode::kUnsupported);
}

}  // namespace
}  // namespace arrowquant
