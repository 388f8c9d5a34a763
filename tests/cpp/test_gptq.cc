// GPTQ and the second moments it uses: exact sums independent of threads, byte-identical to
// round-to-nearest when H carries no correlation, and a lower layer-output error when it does.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "arrowquant/gptq.h"
#include "quant/gptq_factor.h"

namespace arrowquant {
namespace {

std::vector<float> Correlated(uint64_t n, uint64_t d, uint32_t seed) {
  // Rows x = A z with a few strong shared factors plus noise: neighbouring inputs correlate.
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd;
  const uint64_t k = 8;
  std::vector<float> a(d * k), x(n * d);
  for (auto& v : a) v = nd(rng);
  for (uint64_t r = 0; r < n; ++r) {
    float z[k];
    for (auto& v : z) v = nd(rng);
    for (uint64_t i = 0; i < d; ++i) {
      float s = 0.3f * nd(rng);
      for (uint64_t j = 0; j < k; ++j) s += a[i * k + j] * z[j];
      x[r * d + i] = s;
    }
  }
  return x;
}

TensorView View(const std::vector<float>& w, const std::vector<uint64_t>& shape) {
  return TensorView{"w", DType::kF32, shape, std::as_bytes(std::span<const float>(w))};
}

TEST(SecondMoments, ExactSumsForAnyThreadCountAndBlocking) {
  const uint64_t n = 300, d = 512;
  const auto x = Correlated(n, d, 1);
  auto full1 = *SecondMoments::Make(d);
  auto full3 = *SecondMoments::Make(d);
  auto blocked = *SecondMoments::Make(d, 256);
  ASSERT_TRUE(full1->Add(x, n, 1).ok());
  ASSERT_TRUE(full3->Add(x, n, 3).ok());
  ASSERT_TRUE(blocked->Add(x, n, 2).ok());
  EXPECT_EQ(full1->count(), n);
  ASSERT_EQ(full1->data().size(), full3->data().size());
  EXPECT_EQ(0, std::memcmp(full1->data().data(), full3->data().data(),
                           full1->data().size() * sizeof(double)));
  // Packed upper triangles: d(d+1)/2 values for the full H, two 256-column triangles blocked.
  EXPECT_EQ(full1->data().size(), d * (d + 1) / 2);
  EXPECT_EQ(blocked->data().size(), 2 * 256 * 257 / 2);
  for (uint64_t i = 0; i < d; i += 37) {
    for (uint64_t j = i; j < d; j += 41) {
      double ref = 0;
      for (uint64_t r = 0; r < n; ++r) ref += double(x[r * d + i]) * x[r * d + j];
      const double hij = full1->UpperRow(0, i)[j - i];
      EXPECT_NEAR(hij, ref, 1e-5 * (std::fabs(ref) + 1)) << i << "," << j;
      if (i / 256 == j / 256) {
        EXPECT_EQ(blocked->UpperRow(i / 256, i % 256)[j - i], hij);
      }
    }
  }
  EXPECT_EQ(blocked->num_blocks(), 2u);
  EXPECT_FALSE(SecondMoments::Make(d, 100).ok());
  EXPECT_FALSE(full1->Add(x, n + 1).ok());
}

TEST(SecondMoments, MergeOfHalvesEqualsTheWhole) {
  const uint64_t n = 128, d = 64;
  const auto x = Correlated(n, d, 2);
  auto all = *SecondMoments::Make(d);
  auto a = *SecondMoments::Make(d);
  auto b = *SecondMoments::Make(d);
  ASSERT_TRUE(all->Add(x, n).ok());
  ASSERT_TRUE(a->Add(std::span<const float>(x).first(64 * d), 64).ok());
  ASSERT_TRUE(b->Add(std::span<const float>(x).subspan(64 * d), 64).ok());
  ASSERT_TRUE(a->Merge(*b).ok());
  EXPECT_EQ(a->count(), n);
  for (size_t k = 0; k < all->data().size(); ++k) {
    EXPECT_EQ(a->data()[k], all->data()[k]);  // tiles of 64 rows: the same f32 partial sums
  }
}

// Every value of every spec field (width, group size, scheme, grid, scale storage) appears, in
// 24 combinations rather than the full product (which runs minutes under ASan).
std::vector<QuantSpec> Specs() {
  std::vector<QuantSpec> out;
  int k = 0;
  for (int bits : {2, 3, 4, 8}) {
    for (auto scales : {ScaleStorage::kF16, ScaleStorage::kF32, ScaleStorage::kCoded}) {
      for (auto scheme : {Scheme::kAsymmetric, Scheme::kSymmetric}) {
        const Grid grid = (k % 2) ? Grid::kMinMax : Grid::kSearch;
        const int g = std::array<int, 3>{32, 128, 0}[static_cast<size_t>(k / 2 % 3)];
        out.push_back(QuantSpec{bits, g, scheme, grid, scales, bits == 4 ? 7 : 6});
        ++k;
      }
    }
  }
  return out;
}

TEST(GptqFactor, UpperFactorOfTheInverse) {
  // U upper with a positive diagonal and U^T U H = I, on a correlated (ill-conditioned) H.
  for (const uint64_t m : {1ull, 2ull, 7ull, 64ull, 300ull}) {
    const uint64_t n = 4 * m + 8;
    const auto x = Correlated(n, m, static_cast<uint32_t>(m));
    std::vector<double> h(m * m, 0.0);
    for (uint64_t r = 0; r < n; ++r) {
      for (uint64_t i = 0; i < m; ++i) {
        for (uint64_t j = 0; j < m; ++j) h[i * m + j] += double(x[r * m + i]) * x[r * m + j];
      }
    }
    for (uint64_t i = 0; i < m; ++i) h[i * m + i] += 0.01 * h[i * m + i] + 1e-3;
    std::vector<double> a = h;
    const std::vector<float> u = quant::UpperFactorOfInverse(a, m);
    ASSERT_EQ(u.size(), m * m) << m;
    double worst = 0;
    for (uint64_t i = 0; i < m; ++i) {
      EXPECT_GT(u[i * m + i], 0.0f) << m;
      for (uint64_t j = 0; j < i; ++j) EXPECT_EQ(u[i * m + j], 0.0f) << m;
    }
    // (U^T U H)[i][j] = sum_k U[k][i] (U H)[k][j].
    std::vector<double> uh(m * m, 0.0);
    for (uint64_t k = 0; k < m; ++k) {
      for (uint64_t l = k; l < m; ++l) {
        for (uint64_t j = 0; j < m; ++j) uh[k * m + j] += double(u[k * m + l]) * h[l * m + j];
      }
    }
    for (uint64_t i = 0; i < m; ++i) {
      for (uint64_t j = 0; j < m; ++j) {
        double s = 0;
        for (uint64_t k = 0; k <= i; ++k) s += double(u[k * m + i]) * uh[k * m + j];
        worst = std::max(worst, std::abs(s - (i == j ? 1.0 : 0.0)));
      }
    }
    EXPECT_LT(worst, 1e-4) << m;  // U is stored as f32
  }
  std::vector<double> indefinite{1, 2, 2, 1};
  EXPECT_TRUE(quant::UpperFactorOfInverse(indefinite, 2).empty());
}

TEST(Gptq, UncorrelatedInputsGiveRoundToNearestByteForByte) {
  const uint64_t rows = 20, cols = 256;
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0, 0.05f);
  std::vector<float> w(rows * cols);
  for (auto& v : w) v = nd(rng);
  auto h = *SecondMoments::Make(cols);
  std::vector<double> diag(cols * (cols + 1) / 2, 0.0);  // packed upper triangle
  for (uint64_t i = 0, at = 0; i < cols; at += cols - i, ++i) diag[at] = 1.0 + (i % 7);
  ASSERT_TRUE(h->Restore(diag, 100).ok());
  for (const QuantSpec& spec : Specs()) {
    auto rtn = Quantize(View(w, {rows, cols}), spec);
    auto gq = QuantizeGptq(View(w, {rows, cols}), spec, *h);
    ASSERT_TRUE(rtn.ok() && gq.ok()) << spec.ToString();
    EXPECT_EQ(rtn->codes, gq->codes) << spec.ToString();
    EXPECT_EQ(rtn->scales, gq->scales) << spec.ToString();
    EXPECT_EQ(rtn->zeros, gq->zeros) << spec.ToString();
    EXPECT_EQ(rtn->super_scales, gq->super_scales) << spec.ToString();
  }
}

TEST(Gptq, LowerOutputErrorThanRoundToNearestInEveryFormat) {
  const uint64_t rows = 24, cols = 256, n = 1024;
  const auto x = Correlated(n, cols, 4);
  auto h = *SecondMoments::Make(cols);
  ASSERT_TRUE(h->Add(x, n, 2).ok());
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0, 0.05f);
  std::vector<float> w(rows * cols);
  for (auto& v : w) v = nd(rng);
  const TensorView view = View(w, {rows, 2, cols / 2});  // a conv-like rank-3 weight
  int better = 0, total = 0;
  for (const QuantSpec& spec : Specs()) {
    auto rtn = Quantize(view, spec);
    auto gq = QuantizeGptq(view, spec, *h, GptqOptions{0.01, 1});
    auto gq4 = QuantizeGptq(view, spec, *h, GptqOptions{0.01, 4});
    auto ao1 = QuantizeGptq(view, spec, *h, GptqOptions{0.01, 1, true});
    auto ao3 = QuantizeGptq(view, spec, *h, GptqOptions{0.01, 3, true});
    ASSERT_TRUE(rtn.ok() && gq.ok() && gq4.ok() && ao1.ok() && ao3.ok()) << spec.ToString();
    EXPECT_EQ(ao1->codes, ao3->codes) << spec.ToString();
    const double e_ao = *RelativeOutputError(*ao1, view, *h);
    ASSERT_TRUE(gq->Validate().ok());
    EXPECT_EQ(gq->codes, gq4->codes) << spec.ToString();  // thread count changes nothing
    EXPECT_EQ(gq->scales, gq4->scales) << spec.ToString();
    const double e_rtn = *RelativeOutputError(*rtn, view, *h);
    const double e_gq = *RelativeOutputError(*gq, view, *h);
    EXPECT_LT(e_gq, e_rtn * (spec.bits == 8 ? 1.0 : 0.8)) << spec.ToString();
    EXPECT_LT(e_ao, e_rtn) << spec.ToString() << " (activation order)";
    better += e_gq < e_rtn;
    ++total;
  }
  EXPECT_EQ(better, total);
}

TEST(Gptq, BlockDiagonalStillBeatsRoundToNearest) {
  const uint64_t rows = 16, cols = 512, n = 2048;
  const auto x = Correlated(n, cols, 6);
  auto full = *SecondMoments::Make(cols);
  auto blocked = *SecondMoments::Make(cols, 256);
  ASSERT_TRUE(full->Add(x, n, 2).ok());
  ASSERT_TRUE(blocked->Add(x, n, 2).ok());
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0, 0.05f);
  std::vector<float> w(rows * cols);
  for (auto& v : w) v = nd(rng);
  const TensorView view = View(w, {rows, cols});
  const QuantSpec spec = QuantSpec::Recommended(4);
  const double e_rtn = *RelativeOutputError(*Quantize(view, spec), view, *full);
  const double e_full = *RelativeOutputError(*QuantizeGptq(view, spec, *full), view, *full);
  const double e_blk = *RelativeOutputError(*QuantizeGptq(view, spec, *blocked), view, *full);
  EXPECT_LT(e_full, e_blk);
  EXPECT_LT(e_blk, e_rtn);
}

TEST(Gptq, ErrorsNameTheProblem) {
  std::vector<float> w(4 * 64, 0.01f);
  w[5] = NAN;
  auto h = *SecondMoments::Make(64);
  std::vector<float> x(64, 1.0f);
  ASSERT_TRUE(h->Add(x, 1).ok());
  auto r = QuantizeGptq(View(w, {4, 64}), QuantSpec::Recommended(4), *h);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNonFinite);
  auto h2 = *SecondMoments::Make(32);
  auto r2 = QuantizeGptq(View(w, {4, 64}), QuantSpec::Recommended(4), *h2);
  ASSERT_FALSE(r2.ok());
  EXPECT_NE(r2.status().message().find("64"), std::string::npos);
}

}  // namespace
}  // namespace arrowquant
