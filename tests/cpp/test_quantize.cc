#include <gtest/gtest.h>
#include <rapidcheck.h>

#include <cmath>
#include <cstring>
#include <random>

#include "arrowquant/quantize.h"
#include "quant/group_fit.h"
#include "quant/inspect.h"

namespace arrowquant {
namespace {

struct Owned {
  std::vector<std::byte> bytes;
  TensorView view;
};

Owned MakeTensor(const std::vector<float>& v, std::vector<uint64_t> shape,
                 DType dtype = DType::kF32) {
  Owned o;
  o.bytes.resize(v.size() * ElementBytes(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::kF32)
      std::memcpy(o.bytes.data() + 4 * i, &v[i], 4);
    else {
      const uint16_t h = dtype == DType::kF16 ? F32ToF16Bits(v[i]) : F32ToBF16Bits(v[i]);
      std::memcpy(o.bytes.data() + 2 * i, &h, 2);
    }
  }
  o.view = TensorView{"w", dtype, std::move(shape), o.bytes};
  return o;
}

std::vector<float> SourceF32(const Owned& o) {
  std::vector<float> x(o.view.num_elements());
  for (size_t i = 0; i < x.size(); ++i) {
    if (o.view.dtype == DType::kF32)
      std::memcpy(&x[i], o.bytes.data() + 4 * i, 4);
    else {
      uint16_t h;
      std::memcpy(&h, o.bytes.data() + 2 * i, 2);
      x[i] = o.view.dtype == DType::kF16 ? F16BitsToF32(h) : BF16BitsToF32(h);
    }
  }
  return x;
}

std::vector<float> Deq(const QuantizedTensor& q) {
  std::vector<float> y(q.num_elements());
  const Status st = Dequantize(q, DType::kF32, std::as_writable_bytes(std::span<float>(y)));
  EXPECT_TRUE(st.ok()) << st.ToString();
  return y;
}

std::vector<QuantSpec> AllSpecs() {
  std::vector<QuantSpec> out;
  for (int bits : {2, 3, 4, 8})
    for (Scheme sc : {Scheme::kAsymmetric, Scheme::kSymmetric})
      for (Grid gr : {Grid::kMinMax, Grid::kSearch})
        for (int ss = 0; ss < 5; ++ss)  // f16, f32, q6, q7, q8
          for (int g : {32, 64, 128, 256, 0}) {
            QuantSpec s{bits, g, sc, gr, ss < 2 ? ScaleStorage(ss) : ScaleStorage::kCoded};
            s.scale_bits = ss < 2 ? 6 : 4 + ss;
            out.push_back(s);
          }
  return out;
}

// The checks every quantized tensor must pass, whatever the format.
void CheckInvariants(const QuantizedTensor& q, const std::vector<float>& x) {
  const auto d = quant::DecodeAll(q);
  const auto y = Deq(q);
  const uint64_t groups = q.groups_per_row(), g = q.group_len();
  const float qmax = static_cast<float>((1 << q.spec.bits) - 1);
  ASSERT_EQ(y.size(), x.size());
  EXPECT_DOUBLE_EQ(q.bits_per_weight(), 8.0 * q.nbytes() / q.num_elements());
  for (uint64_t r = 0; r < q.rows; ++r) {
    for (uint64_t c = 0; c < q.cols; ++c) {
      const size_t i = r * q.cols + c;
      const size_t gi = r * groups + c / g;
      const float s = d.scale[gi], off = d.offset[gi];
      ASSERT_TRUE(std::isfinite(y[i]));
      ASSERT_GE(s, 0.0f);
      ASSERT_LE(d.codes[i], qmax);
      const float err = std::fabs(y[i] - x[i]);
      // The code is the nearest point of the group's grid (up to f32 rounding).
      for (int delta : {-1, 1}) {
        const int nc = d.codes[i] + delta;
        if (nc < 0 || nc > qmax) continue;
        const float alt = std::fabs(static_cast<float>(nc) * s - off - x[i]);
        ASSERT_LE(err, alt + 1e-6f * (std::fabs(x[i]) + s)) << q.spec.ToString() << " at " << i;
      }
      // Clipped-grid bound (any grid): half a step inside the grid's range, the distance to
      // the nearer end outside it.
      const float lo_grid = -off, hi_grid = qmax * s - off;
      const float outside = std::max({0.0f, lo_grid - x[i], x[i] - hi_grid});
      ASSERT_LE(err, std::max(0.5f * s, outside) * (1 + 1e-5f) + 1e-6f * std::fabs(x[i]))
          << q.spec.ToString() << " at " << i;
      // The min/max grid covers the group: error at most half a step.
      if (q.spec.grid == Grid::kMinMax) {
        ASSERT_LE(err, 0.5f * s * (1 + 1e-5f) + 1e-6f * std::fabs(x[i]))
            << q.spec.ToString() << " at " << i << " x=" << x[i] << " s=" << s;
      }
    }
  }
}

TEST(Quantize, InvariantsForEveryFormat) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::student_t_distribution<float> heavy(3.0f);
  for (const auto& spec : AllSpecs()) {
    for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
      const uint64_t rows = 3, cols = 300;  // 300: every group size leaves a tail
      std::vector<float> v(rows * cols);
      for (auto& e : v) e = normal(rng);
      for (uint64_t c = 0; c < cols; c += 37) v[c] = heavy(rng) * 0.05f;  // outliers in row 0
      for (uint64_t c = 0; c < cols; ++c)
        v[2 * cols + c] = std::fabs(v[2 * cols + c]);  // all positive row
      auto t = MakeTensor(v, {rows, cols}, dt);
      auto q = Quantize(t.view, spec);
      ASSERT_TRUE(q.ok()) << spec.ToString() << ": " << q.status().ToString();
      EXPECT_EQ(q->shape, (std::vector<uint64_t>{rows, cols}));
      CheckInvariants(*q, SourceF32(t));
    }
  }
}

TEST(Quantize, SearchNeverWorseThanMinMaxPerGroup) {
  std::mt19937 rng(5);
  std::student_t_distribution<float> t5(5.0f);
  for (const auto& spec : AllSpecs()) {
    if (spec.scales == ScaleStorage::kCoded || spec.grid != Grid::kSearch) continue;
    std::vector<float> v(4 * 512);
    for (auto& e : v) e = t5(rng) * 0.02f;
    auto t = MakeTensor(v, {4, 512});
    QuantSpec mm = spec;
    mm.grid = Grid::kMinMax;
    auto qs = Quantize(t.view, spec), qm = Quantize(t.view, mm);
    ASSERT_TRUE(qs.ok() && qm.ok());
    const auto ys = Deq(*qs), ym = Deq(*qm);
    const uint64_t g = qs->group_len();
    for (uint64_t start = 0; start < v.size(); start += g) {
      double es = 0, em = 0;
      for (uint64_t i = start; i < std::min<uint64_t>(v.size(), start + g); ++i) {
        es += (ys[i] - v[i]) * (ys[i] - v[i]);
        em += (ym[i] - v[i]) * (ym[i] - v[i]);
      }
      ASSERT_LE(es, em * (1 + 1e-9)) << spec.ToString() << " group at " << start;
    }
  }
}

TEST(Quantize, PropertyRandomShapesAndValues) {
  const bool ok = rc::check("invariants hold for random tensors and formats", [] {
    const auto specs = AllSpecs();
    const auto spec = specs[*rc::gen::inRange<size_t>(0, specs.size())];
    const uint64_t rows = *rc::gen::inRange<uint64_t>(1, 4);
    const uint64_t cols = *rc::gen::inRange<uint64_t>(1, 600);
    const float scale = *rc::gen::element(1e-4f, 0.02f, 1.0f, 300.0f);
    const auto ints =
        *rc::gen::container<std::vector<int>>(rows * cols, rc::gen::inRange(-1000, 1000));
    std::vector<float> v(ints.size());
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(ints[i]) / 1000.0f * scale;
    auto t = MakeTensor(v, {rows, cols});
    auto q = Quantize(t.view, spec);
    RC_ASSERT(q.ok());
    CheckInvariants(*q, v);
  });
  EXPECT_TRUE(ok);
}

TEST(Quantize, ConstantAndZeroGroups) {
  for (const auto& spec : AllSpecs()) {
    // Values whose scales sit in the f16 normal range (f16 scales lose precision below 6e-5).
    for (float c : {0.0f, 0.5f, -3.25f, 0.02f}) {
      std::vector<float> v(2 * 64, c);
      auto t = MakeTensor(v, {2, 64});
      auto q = Quantize(t.view, spec);
      ASSERT_TRUE(q.ok());
      const auto y = Deq(*q);
      // Within the precision of the stored scale: f32 exact to 1e-6; an f16 scale (2^-11); a
      // 6-bit code times an f16 super-scale that may be subnormal for small weights (1%).
      const float tol = spec.scales == ScaleStorage::kF32   ? 1e-6f
                        : spec.scales == ScaleStorage::kF16 ? 2e-3f
                                                            : 1e-2f;
      for (float e : y) {
        ASSERT_TRUE(std::isfinite(e));
        if (c == 0.0f)
          ASSERT_EQ(e, 0.0f) << spec.ToString();
        else
          ASSERT_NEAR(e, c, std::fabs(c) * tol) << spec.ToString();
      }
    }
  }
}

TEST(Quantize, GoldenBytes) {
  // One group of 16 values 0..15: scale 1, zero-point 0, codes 0..15.
  std::vector<float> v(16);
  for (int i = 0; i < 16; ++i) v[i] = static_cast<float>(i);
  auto t = MakeTensor(v, {1, 16});
  auto q =
      Quantize(t.view, QuantSpec{4, 32, Scheme::kAsymmetric, Grid::kMinMax, ScaleStorage::kF16});
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->codes, (std::vector<uint8_t>{0x10, 0x32, 0x54, 0x76, 0x98, 0xba, 0xdc, 0xfe}));
  EXPECT_EQ(q->scales, (std::vector<uint8_t>{0x00, 0x3c}));  // f16 1.0, little-endian
  EXPECT_EQ(q->zeros, (std::vector<uint8_t>{0x00}));
  EXPECT_TRUE(q->super_scales.empty());
  EXPECT_DOUBLE_EQ(q->bits_per_weight(), 8.0 * 11 / 16);

  // INT2 symmetric, f32 scale: [-1, 0, 1, 1] -> signed codes -1 0 1 1, stored +2 -> 1 2 3 3.
  auto t2 = MakeTensor({-1.0f, 0.0f, 1.0f, 1.0f}, {1, 4});
  auto q2 =
      Quantize(t2.view, QuantSpec{2, 32, Scheme::kSymmetric, Grid::kMinMax, ScaleStorage::kF32});
  ASSERT_TRUE(q2.ok());
  EXPECT_EQ(q2->codes, (std::vector<uint8_t>{0xf9}));
  float s;
  std::memcpy(&s, q2->scales.data(), 4);
  EXPECT_EQ(s, 1.0f);
  EXPECT_TRUE(q2->zeros.empty());
}

TEST(Quantize, RejectsNonFiniteAndBadInput) {
  std::vector<float> v(64, 0.1f);
  v[5] = NAN;
  v[9] = INFINITY;
  auto t = MakeTensor(v, {2, 32});
  t.view.name = "down.weight";
  auto q = Quantize(t.view, QuantSpec::Recommended(4));
  ASSERT_FALSE(q.ok());
  EXPECT_EQ(q.status().code(), StatusCode::kNonFinite);  // a data error, not a bad argument
  EXPECT_NE(q.status().message().find("'down.weight'"), std::string::npos);
  EXPECT_NE(q.status().message().find("2 NaN or Inf"), std::string::npos);

  auto ok = MakeTensor(std::vector<float>(64, 0.1f), {2, 32});
  EXPECT_EQ(Quantize(ok.view, QuantSpec{5, 32}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Quantize(ok.view, QuantSpec{4, 48}).status().code(), StatusCode::kInvalidArgument);
  TensorView bad = ok.view;
  bad.shape = {3, 32};
  EXPECT_EQ(Quantize(bad, QuantSpec{}).status().code(), StatusCode::kSizeMismatch);
  bad = ok.view;
  bad.dtype = DType::kI32;
  bad.shape = {2, 32};
  EXPECT_EQ(Quantize(bad, QuantSpec{}).status().code(), StatusCode::kUnsupported);
  auto huge = MakeTensor(std::vector<float>(32, 1e30f), {1, 32});
  EXPECT_EQ(
      Quantize(huge.view, QuantSpec{4, 32, Scheme::kAsymmetric, Grid::kMinMax, ScaleStorage::kF16})
          .status()
          .code(),
      StatusCode::kScaleOverflow);
  EXPECT_TRUE(
      Quantize(huge.view, QuantSpec{4, 32, Scheme::kAsymmetric, Grid::kMinMax, ScaleStorage::kF32})
          .ok());
}

TEST(Quantize, ThreadCountDoesNotChangeResults) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(37 * 200);
  for (auto& e : v) e = normal(rng);
  auto t = MakeTensor(v, {37, 200});
  for (const auto& spec :
       {QuantSpec::Recommended(4), QuantSpec::Recommended(2),
        QuantSpec{8, 64, Scheme::kSymmetric, Grid::kSearch, ScaleStorage::kF16}}) {
    auto a = Quantize(t.view, spec, {1});
    auto b = Quantize(t.view, spec, {3});
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->codes, b->codes);
    EXPECT_EQ(a->scales, b->scales);
    EXPECT_EQ(a->zeros, b->zeros);
    EXPECT_EQ(a->super_scales, b->super_scales);
    auto ma = MeasureError(*a, t.view, {1}), mb = MeasureError(*a, t.view, {4});
    ASSERT_TRUE(ma.ok() && mb.ok());
    EXPECT_EQ(ma->mse, mb->mse);
    EXPECT_EQ(ma->cosine, mb->cosine);
  }
}

// The pipeline's one-pass quantize-and-measure gives the same tensor and exactly the metrics
// of Quantize() followed by MeasureError(), for every format, input dtype and a short last group.
TEST(Quantize, QuantizeMeasuredIsQuantizeThenMeasureError) {
  std::mt19937 rng(17);
  std::student_t_distribution<float> heavy(4.0f);
  std::vector<float> v(23 * 200);
  for (auto& e : v) e = 0.02f * heavy(rng);
  for (DType dt : {DType::kF32, DType::kF16, DType::kBF16}) {
    auto t = MakeTensor(v, {23, 200}, dt);
    for (const auto& spec : AllSpecs()) {
      if (spec.group_size != 64 && spec.group_size != 32) continue;  // 200 = 3 x 64 + 8: a tail
      auto q = Quantize(t.view, spec, {2});
      auto qm = QuantizeMeasured(t.view, spec, {3});
      ASSERT_TRUE(q.ok() && qm.ok()) << spec.ToString();
      EXPECT_EQ(q->codes, qm->q.codes) << spec.ToString();
      EXPECT_EQ(q->scales, qm->q.scales) << spec.ToString();
      EXPECT_EQ(q->super_scales, qm->q.super_scales) << spec.ToString();
      EXPECT_EQ(q->zeros, qm->q.zeros) << spec.ToString();
      auto m = MeasureError(*q, t.view, {1});
      ASSERT_TRUE(m.ok());
      const ErrorMetrics& f = qm->metrics;
      EXPECT_EQ(m->mse, f.mse) << spec.ToString();
      EXPECT_EQ(m->rel_rmse, f.rel_rmse) << spec.ToString();
      EXPECT_EQ(m->cosine, f.cosine) << spec.ToString();
      EXPECT_EQ(m->max_abs, f.max_abs) << spec.ToString();
      EXPECT_EQ(m->count, f.count);
    }
  }
}

TEST(Quantize, MetricsAndHalfOutputs) {
  std::mt19937 rng(13);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> v(8 * 256);
  for (auto& e : v) e = normal(rng);
  auto t = MakeTensor(v, {8, 2, 128});  // rank 3: rows = 8, cols = 256
  auto q = Quantize(t.view, QuantSpec::Recommended(4));
  ASSERT_TRUE(q.ok());
  EXPECT_EQ(q->rows, 8u);
  EXPECT_EQ(q->cols, 256u);
  const auto y = Deq(*q);
  double sse = 0, ww = 0, wq = 0, qq = 0, mx = 0;
  for (size_t i = 0; i < v.size(); ++i) {
    sse += (double(v[i]) - y[i]) * (double(v[i]) - y[i]);
    ww += double(v[i]) * v[i];
    qq += double(y[i]) * y[i];
    wq += double(v[i]) * y[i];
    mx = std::max(mx, std::fabs(double(v[i]) - y[i]));
  }
  auto m = MeasureError(*q, t.view);
  ASSERT_TRUE(m.ok());
  EXPECT_NEAR(m->mse, sse / v.size(), 1e-12);
  EXPECT_NEAR(m->rel_rmse, std::sqrt(sse / ww), 1e-9);
  EXPECT_NEAR(m->sqnr_db, 10 * std::log10(ww / sse), 1e-6);
  EXPECT_NEAR(m->cosine, wq / std::sqrt(ww * qq), 1e-9);
  EXPECT_EQ(m->max_abs, mx);
  EXPECT_LT(m->rel_rmse, 0.09);  // the recommended INT4 format on Gaussian weights

  std::vector<uint16_t> h(v.size());
  ASSERT_TRUE(Dequantize(*q, DType::kF16, std::as_writable_bytes(std::span<uint16_t>(h))).ok());
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(h[i], F32ToF16Bits(y[i]));
  ASSERT_TRUE(Dequantize(*q, DType::kBF16, std::as_writable_bytes(std::span<uint16_t>(h))).ok());
  for (size_t i = 0; i < v.size(); ++i) ASSERT_EQ(h[i], F32ToBF16Bits(y[i]));
  std::vector<uint16_t> small(3);
  EXPECT_EQ(Dequantize(*q, DType::kF16, std::as_writable_bytes(std::span<uint16_t>(small))).code(),
            StatusCode::kSizeMismatch);
}

// Inference dequantizes a weight tile by tile from borrowed buffers: every tile equals the same
// rows of the whole-tensor decode, for every format, tails included.
TEST(Quantize, DequantizeRowsIsTheWholeDecodeTileByTile) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 0.05f);
  std::vector<float> v(7 * 300);
  for (auto& e : v) e = normal(rng);
  auto t = MakeTensor(v, {7, 300});  // 300 columns: a short last group at every group size
  for (const QuantSpec& spec : AllSpecs()) {
    auto q = Quantize(t.view, spec);
    ASSERT_TRUE(q.ok()) << spec.ToString();
    const auto whole = Deq(*q);
    const QuantizedView view = q->View();
    for (uint64_t tile : {1u, 3u, 7u}) {
      for (uint64_t r = 0; r < q->rows; r += tile) {
        const uint64_t e = std::min<uint64_t>(q->rows, r + tile);
        std::vector<float> y((e - r) * q->cols);
        const Status st = DequantizeRows(view, r, e, DType::kF32,
                                         std::as_writable_bytes(std::span<float>(y)), {2});
        ASSERT_TRUE(st.ok()) << st.ToString();
        ASSERT_EQ(0, std::memcmp(y.data(), whole.data() + r * q->cols, y.size() * 4))
            << spec.ToString() << " rows " << r;
      }
    }
  }
  auto q = Quantize(t.view, QuantSpec::Recommended(4));
  ASSERT_TRUE(q.ok());
  std::vector<float> y(2 * 300);
  auto out = std::as_writable_bytes(std::span<float>(y));
  EXPECT_EQ(DequantizeRows(q->View(), 6, 8, DType::kF32, out).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(DequantizeRows(q->View(), 0, 3, DType::kF32, out).code(), StatusCode::kSizeMismatch);
  QuantizedView cut = q->View();
  cut.codes = cut.codes.subspan(1);
  EXPECT_EQ(DequantizeRows(cut, 0, 2, DType::kF32, out).code(), StatusCode::kCorrupt);
}

TEST(QuantSpecFields, ParsePrintRoundTripAndRejectUnknown) {
  for (int bits : {2, 3, 4, 8}) {
    for (const char* scheme : {"asym", "sym"}) {
      for (const char* method : {"search", "minmax"}) {
        for (const char* sd : {"f16", "f32", "q6", "q7", "q8"}) {
          auto s = QuantSpec::FromFields(bits, 64, scheme, method, sd);
          ASSERT_TRUE(s.ok()) << s.status().ToString();
          EXPECT_EQ(SchemeName(s->scheme), scheme);
          EXPECT_EQ(GridName(s->grid), method);
          EXPECT_EQ(ScaleDTypeName(*s), sd);
        }
      }
    }
  }
  EXPECT_EQ(QuantSpec::Recommended(4).ToString(), "int4-asym-g32-q7-search");
  // Unknown strings are errors, never silently a default.
  for (auto bad : {QuantSpec::FromFields(4, 32, "nf4", "search", "q7"),
                   QuantSpec::FromFields(4, 32, "asym", "hqq", "q7"),
                   QuantSpec::FromFields(4, 32, "asym", "search", "q5"),
                   QuantSpec::FromFields(4, 32, "asym", "search", "F16"),
                   QuantSpec::FromFields(5, 32, "asym", "search", "q7")}) {
    EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  }
}

}  // namespace
}  // namespace arrowquant
