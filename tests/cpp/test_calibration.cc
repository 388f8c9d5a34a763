#include <gtest/gtest.h>
#include <rapidcheck.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "arrowquant/calibration.h"

namespace arrowquant {
namespace {

using H = ActivationHistogram;

TEST(Histogram, BinValueIsWithinABinOfTheValue) {
  EXPECT_EQ(H::BinOf(0.0f), H::kZeroBin);
  EXPECT_EQ(H::BinOf(-0.0f), H::kZeroBin);
  EXPECT_EQ(H::BinOf(1e-9f), H::kZeroBin);
  EXPECT_EQ(H::BinOf(3.0f) - H::kZeroBin, H::kZeroBin - H::BinOf(-3.0f));
  EXPECT_EQ(H::BinOf(1e30f), H::kNumBins - 1);
  EXPECT_EQ(H::BinOf(-1e30f), 0);
  rc::check("relative error <= half a bin", [](float x) {
    RC_PRE(std::isfinite(x) && std::fabs(x) >= 1e-7f && std::fabs(x) < 6e4f);
    const double v = H::BinValue(H::BinOf(x));
    RC_ASSERT(std::fabs(v - x) <= std::fabs(x) * (0.5 / H::kBinsPerOctave) + 1e-12);
    RC_ASSERT((v > 0) == (x > 0));
  });
}

TEST(Collector, PerChannelRangesForConvLayout) {
  auto c = ActivationCollector::Make(2).value();
  // [N=2, C=2, HW=3]
  const std::vector<float> x = {1, -2, 3,        /*c1*/ 0.5f, 0.25f, 0, /*n1 c0*/ -4,
                                0, 0,  /*c1*/ 9, 0,           0};
  ASSERT_TRUE(c->Add(10, x, {2, 2, 3}).ok());
  const auto& s = c->by_timestep().at(10);
  EXPECT_EQ(s.count, 12u);
  EXPECT_FLOAT_EQ(s.channel_min[0], -4);
  EXPECT_FLOAT_EQ(s.channel_max[0], 3);
  EXPECT_FLOAT_EQ(s.channel_absmax[0], 4);
  EXPECT_FLOAT_EQ(s.channel_min[1], 0);
  EXPECT_FLOAT_EQ(s.channel_max[1], 9);
  uint64_t n = 0;
  for (auto h : s.histogram) n += h;
  EXPECT_EQ(n, 12u);
  EXPECT_EQ(s.histogram[H::kZeroBin], 5u);
  // Merging saved statistics gives the same as adding the data again.
  auto d = ActivationCollector::Make(2).value();
  ASSERT_TRUE(d->Merge(s).ok());
  ASSERT_TRUE(d->Merge(s).ok());
  EXPECT_EQ(d->by_timestep().at(10).count, 24u);
  EXPECT_FLOAT_EQ(d->Overall().absmax[1], 9);
}

TEST(Collector, SameStatisticsForAnyThreadCountAndLayout) {
  // Heavy-tailed values with exact zeros, a row layout and a conv layout, 1..5 threads.
  std::mt19937 rng(7);
  std::student_t_distribution<float> td(2.0f);
  std::vector<float> x(7 * 12 * 33);
  for (size_t i = 0; i < x.size(); ++i) x[i] = i % 11 == 0 ? 0.0f : td(rng);
  for (const ActivationLayout layout :
       {ActivationLayout{7 * 33, 12, 1}, ActivationLayout{7, 12, 33}}) {
    auto one = ActivationCollector::Make(12).value();
    ASSERT_TRUE(one->Add(3, x, layout, 1).ok());
    const auto& a = one->by_timestep().at(3);
    // The plain definition: per-channel min/max over every value of the channel.
    for (uint64_t c = 0; c < 12; ++c) {
      float lo = INFINITY, hi = -INFINITY;
      for (uint64_t o = 0; o < layout.outer; ++o) {
        for (uint64_t i = 0; i < layout.inner; ++i) {
          const float v = x[(o * 12 + c) * layout.inner + i];
          lo = std::min(lo, v);
          hi = std::max(hi, v);
        }
      }
      EXPECT_EQ(a.channel_min[c], lo);
      EXPECT_EQ(a.channel_max[c], hi);
    }
    for (int threads : {2, 3, 5}) {
      auto many = ActivationCollector::Make(12).value();
      ASSERT_TRUE(many->Add(3, x, layout, threads).ok());
      const auto& b = many->by_timestep().at(3);
      EXPECT_EQ(a.histogram, b.histogram) << threads;
      EXPECT_EQ(a.channel_min, b.channel_min) << threads;
      EXPECT_EQ(a.channel_max, b.channel_max) << threads;
      EXPECT_EQ(a.channel_absmax, b.channel_absmax) << threads;
      EXPECT_EQ(a.count, b.count);
    }
  }
  // A non-finite value is found whichever thread reads it, and nothing is recorded.
  x[x.size() - 2] = -INFINITY;
  auto bad = ActivationCollector::Make(12).value();
  const Status st = bad->Add(3, x, {7, 12, 33}, 3);
  EXPECT_EQ(st.code(), StatusCode::kNonFinite);
  EXPECT_TRUE(bad->by_timestep().empty());
}

TEST(Collector, BadInputIsAnError) {
  auto c = ActivationCollector::Make(2).value();
  const std::vector<float> x = {1, NAN};
  const Status st = c->Add(0, x, {1, 2, 1});
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("finite"), std::string::npos);
  EXPECT_FALSE(c->Add(0, x, {1, 3, 1}).ok());  // channel count
  EXPECT_FALSE(c->Add(0, x, {2, 2, 1}).ok());  // size
  EXPECT_FALSE(ActivationCollector::Make(0).ok());
}

TEST(Grid, RangeIncludesZeroAndEnds) {
  const ActivationGrid g = GridForRange(0.5, 2.0, 8);  // widened to [0, 2]
  EXPECT_EQ(g.zero_point, 0);
  EXPECT_NEAR(g.scale * 255, 2.0, 1e-6);
  const ActivationGrid s = GridForRange(-1.0, 3.0, 4);
  EXPECT_NEAR(s.scale, 4.0 / 15, 1e-6);
  EXPECT_EQ(s.zero_point, 4);  // round(1 / (4/15)) = round(3.75)
}

// Timesteps 0..19; values uniform in [-a_t, a_t] with a jump at `jump`.
std::unique_ptr<ActivationCollector> Stepped(int jump, float small, float large) {
  auto c = ActivationCollector::Make(4).value();
  std::mt19937 rng(1);
  for (int t = 0; t < 20; ++t) {
    const float a = t < jump ? small : large;
    std::uniform_real_distribution<float> u(-a, a);
    std::vector<float> x(4 * 256);
    for (auto& v : x) v = u(rng);
    EXPECT_TRUE(c->Add(t * 50, x, {256, 4, 1}).ok());
  }
  return c;
}

double TotalError(const ActivationCollector& c, const TimeAwareParams& p) {
  double e = 0;
  for (const auto& [t, s] : c.by_timestep()) {
    int g = 0;
    while (t >= p.group_bounds[g + 1]) ++g;
    e += ExpectedSquaredError(s.histogram, {p.act_scales[g], p.act_zero_points[g]}, p.act_bits);
  }
  return e;
}

TEST(TimeGroups, AdaptiveFindsTheJumpUniformDoesNot) {
  auto c = Stepped(15, 1.0f, 10.0f);
  TimeGroupingOptions o;
  o.groups = 2;
  o.clip = ClipMethod::kMinMax;
  const TimeAwareParams uni = FitTimeGroups(*c, o).value();
  o.adaptive = true;
  const TimeAwareParams ada = FitTimeGroups(*c, o).value();
  EXPECT_EQ(uni.group_bounds, (std::vector<int32_t>{0, 475, 1000}));  // 10 + 10 timesteps
  EXPECT_EQ(ada.group_bounds, (std::vector<int32_t>{0, 725, 1000}));  // between t=700 and 750
  EXPECT_LT(ada.act_scales[0], ada.act_scales[1] / 5);
  // Uniform puts 5 small-range timesteps in the large-range group; adaptive does not.
  EXPECT_LT(TotalError(*c, ada), TotalError(*c, uni) * 0.6);
  o.groups = 1;
  const TimeAwareParams one = FitTimeGroups(*c, o).value();
  EXPECT_LT(TotalError(*c, ada), TotalError(*c, one));
}

TEST(TimeGroups, MoreGroupsThanTimestepsAndBadOptions) {
  auto c = Stepped(10, 1.0f, 2.0f);
  TimeGroupingOptions o;
  o.groups = 50;
  o.adaptive = true;
  const TimeAwareParams p = FitTimeGroups(*c, o).value();
  EXPECT_EQ(p.num_groups, 20);
  EXPECT_EQ(p.group_bounds.size(), 21u);
  o.act_bits = 3;
  EXPECT_FALSE(FitTimeGroups(*c, o).ok());
  o.act_bits = 8;
  o.groups = 0;
  EXPECT_FALSE(FitTimeGroups(*c, o).ok());
  auto empty = ActivationCollector::Make(4).value();
  o.groups = 1;
  EXPECT_FALSE(FitTimeGroups(*empty, o).ok());
}

TEST(TimeGroups, MseClippingBeatsMinMaxWithAnOutlier) {
  auto c = ActivationCollector::Make(1).value();
  std::mt19937 rng(2);
  std::normal_distribution<float> n(0, 1);
  std::vector<float> x(20000);
  for (auto& v : x) v = n(rng);
  x[0] = 200.0f;
  ASSERT_TRUE(c->Add(0, x, {20000, 1, 1}).ok());
  TimeGroupingOptions o;
  o.act_bits = 4;
  o.clip = ClipMethod::kMinMax;
  const auto mm = FitTimeGroups(*c, o).value();
  o.clip = ClipMethod::kMse;
  const auto mse = FitTimeGroups(*c, o).value();
  o.clip = ClipMethod::kPercentile;
  o.percentile = 99.9;  // of ~10^4 values per side: 99.99% would still include the outlier
  const auto pct = FitTimeGroups(*c, o).value();
  EXPECT_LT(TotalError(*c, mse), TotalError(*c, mm));
  EXPECT_LT(pct.act_scales[0], mm.act_scales[0] / 4);
}

TEST(Spatial, EqualizationDirection) {
  // Channel 0 has an activation outlier (100) and a small weight; channel 2 is dead.
  const std::vector<float> w = {1.0f, 4.0f, 2.0f}, x = {100.0f, 1.0f, 0.0f};
  const auto s = EqualizationScales(w, x, 0.5).value();
  EXPECT_NEAR(s[0], 0.1, 1e-6);  // X * 0.1 -> 10, W / 0.1 -> 10: balanced
  EXPECT_NEAR(s[1], 2.0, 1e-6);  // X * 2 -> 2, W / 2 -> 2
  EXPECT_EQ(s[2], 1.0f);         // zero activations: untouched
  for (size_t i = 0; i < 2; ++i) EXPECT_NEAR(x[i] * s[i], w[i] / s[i], 1e-4);
  const auto a = EqualizationScales(w, x, 0.75).value();  // more of the load to the weights
  EXPECT_NEAR(a[0], std::pow(1.0, 0.75) / std::pow(100.0, 0.25), 1e-6);
  EXPECT_FALSE(EqualizationScales(w, std::vector<float>{1.0f}, 0.5).ok());
  EXPECT_FALSE(EqualizationScales(w, x, 1.5).ok());
}

TEST(Spatial, InputChannelAbsMaxOfConvWeight) {
  // [out=2, in=3, 1, 2] F32
  const std::vector<float> v = {1, -2, 0, 3, 5, 0, /*row 1*/ -7, 1, 0.5f, 0, 0, -6};
  std::vector<std::byte> bytes(v.size() * 4);
  std::memcpy(bytes.data(), v.data(), bytes.size());
  const TensorView t{"conv.weight", DType::kF32, {2, 3, 1, 2}, bytes};
  EXPECT_EQ(InputChannelAbsMax(t).value(), (std::vector<float>{7, 3, 6}));
  const TensorView bias{"b", DType::kF32, {12}, bytes};
  EXPECT_FALSE(InputChannelAbsMax(bias).ok());
}

}  // namespace
}  // namespace arrowquant
