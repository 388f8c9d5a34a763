// GGUF: block codecs (error, golden layout, thread independence, bad input), the writer and the
// strict reader (round trip, every malformed case named).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "arrowquant/dtype.h"
#include "arrowquant/gguf.h"

namespace arrowquant {
namespace {

std::vector<float> Normal(size_t n, float sigma, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> x(n);
  for (float& v : x) v = d(rng);
  return x;
}

TensorView View(const std::vector<float>& x, std::vector<uint64_t> shape) {
  return TensorView{"w",
                    DType::kF32,
                    std::move(shape),
                    {reinterpret_cast<const std::byte*>(x.data()), x.size() * 4}};
}

double RelRmse(const std::vector<float>& x, const std::vector<float>& y) {
  double e = 0, w = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    e += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
    w += double(x[i]) * x[i];
  }
  return std::sqrt(e / w);
}

std::vector<float> Decode(GgufType t, const std::vector<uint8_t>& b, size_t n) {
  std::vector<float> y(n);
  EXPECT_TRUE(GgufDecode(t, b, n, y.data()).ok());
  return y;
}

// Error bounds on N(0, 0.02) per type (about 1.3x what the encoder reaches): a regression in
// the fitting or a layout bug (which decodes to noise) fails them.
struct Expect {
  GgufType type;
  double max_rel;
};
constexpr Expect kExpect[] = {
    {GgufType::kQ8_0, 0.0065}, {GgufType::kQ6_K, 0.023}, {GgufType::kQ5_K, 0.045},
    {GgufType::kQ5_0, 0.053},  {GgufType::kQ4_K, 0.09},  {GgufType::kQ4_0, 0.106},
    {GgufType::kQ3_K, 0.19},   {GgufType::kQ2_K, 0.34},  {GgufType::kF16, 0.001},
    {GgufType::kBF16, 0.005},  {GgufType::kF32, 0.0},
};

TEST(GgufCodec, EveryTypeDecodesNearTheInputAndMeasuresItself) {
  const std::vector<float> x = Normal(16 * 512, 0.02f, 1);
  for (const Expect& e : kExpect) {
    SCOPED_TRACE(std::string(GgufTypeName(e.type)));
    auto r = GgufEncode(View(x, {16, 512}), e.type);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    const GgufTypeInfo* info = FindGgufType(static_cast<uint32_t>(e.type));
    EXPECT_EQ(r->bytes.size(), x.size() / info->block * info->bytes);
    const std::vector<float> y = Decode(e.type, r->bytes, x.size());
    const double rel = RelRmse(x, y);
    EXPECT_LE(rel, e.max_rel);
    EXPECT_NEAR(r->metrics.rel_rmse, rel, 1e-6 + rel * 1e-6);
    EXPECT_EQ(r->metrics.count, x.size());
    // More bits, less error: each quantized type is above the next wider one.
    if (e.type != GgufType::kQ8_0 && e.type != GgufType::kF32 && e.type != GgufType::kF16 &&
        e.type != GgufType::kBF16) {
      EXPECT_GT(rel, 0.004);
    }
  }
}

TEST(GgufCodec, SearchBeatsMinMaxAndThreadsDoNotChangeBytes) {
  const std::vector<float> x = Normal(8 * 1024, 0.02f, 2);
  for (GgufType t : GgufCodecs()) {
    SCOPED_TRACE(std::string(GgufTypeName(t)));
    GgufEncodeOptions one, four, minmax;
    four.threads = 4;
    minmax.grid = Grid::kMinMax;
    auto a = GgufEncode(View(x, {8, 1024}), t, one);
    auto b = GgufEncode(View(x, {8, 1024}), t, four);
    auto c = GgufEncode(View(x, {8, 1024}), t, minmax);
    ASSERT_TRUE(a.ok() && b.ok() && c.ok());
    EXPECT_EQ(a->bytes, b->bytes);
    EXPECT_LE(a->metrics.rel_rmse, c->metrics.rel_rmse);
  }
}

// tr(E H E^T) / tr(W H W^T) for rows x cols weights, H dense (cols x cols, f64).
double OutputError(const std::vector<float>& w, const std::vector<float>& y,
                   const std::vector<double>& h, size_t cols) {
  double e = 0, s = 0;
  for (size_t r = 0; r < w.size() / cols; ++r) {
    for (size_t i = 0; i < cols; ++i) {
      for (size_t j = 0; j < cols; ++j) {
        const size_t a = r * cols + i, b = r * cols + j;
        e += (double(w[a]) - y[a]) * h[i * cols + j] * (double(w[b]) - y[b]);
        s += double(w[a]) * h[i * cols + j] * w[b];
      }
    }
  }
  return std::sqrt(e / s);
}

TEST(GgufCodec, GptqLowersTheOutputErrorOfEveryBlockType) {
  // Inputs with correlated channels of unequal energy (as activations are).
  constexpr size_t kCols = 512, kRows = 16, kSamples = 2048;
  const std::vector<float> z = Normal(kSamples * kCols, 1.0f, 3);
  std::vector<float> x(kSamples * kCols);
  for (size_t n = 0; n < kSamples; ++n) {
    for (size_t c = 0; c < kCols; ++c) {
      const float mix = c > 0 ? 0.6f * z[n * kCols + c - 1] : 0.0f;
      x[n * kCols + c] = (z[n * kCols + c] + mix) * (0.2f + 2.0f * float(c % 7) / 7.0f);
    }
  }
  auto h = SecondMoments::Make(kCols, 256);
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE((*h)->Add(x, kSamples, 2).ok());
  std::vector<double> dense(kCols * kCols, 0.0);
  for (size_t b = 0; b < (*h)->num_blocks(); ++b) {
    for (size_t i = 0; i < 256; ++i) {
      for (size_t j = i; j < 256; ++j) {
        dense[(b * 256 + i) * kCols + b * 256 + j] = dense[(b * 256 + j) * kCols + b * 256 + i] =
            (*h)->UpperRow(b, i)[j - i];
      }
    }
  }
  auto factor = FactorGptq(**h);
  ASSERT_TRUE(factor.ok());
  const std::vector<float> w = Normal(kRows * kCols, 0.02f, 4);
  for (GgufType t : GgufCodecs()) {
    if (t == GgufType::kF16 || t == GgufType::kBF16 || t == GgufType::kF32) continue;
    SCOPED_TRACE(std::string(GgufTypeName(t)));
    auto rtn = GgufEncode(View(w, {kRows, kCols}), t);
    GgufEncodeOptions o;
    o.gptq = *factor;
    o.threads = 2;
    auto gptq = GgufEncode(View(w, {kRows, kCols}), t, o);
    ASSERT_TRUE(rtn.ok() && gptq.ok());
    ASSERT_EQ(gptq->bytes.size(), rtn->bytes.size());
    const double er = OutputError(w, Decode(t, rtn->bytes, w.size()), dense, kCols);
    const double eg = OutputError(w, Decode(t, gptq->bytes, w.size()), dense, kCols);
    EXPECT_LT(eg, 0.95 * er);
    // The library's own measure of the same quantity.
    auto lib = RelativeOutputError(Decode(t, gptq->bytes, w.size()), View(w, {kRows, kCols}), **h);
    ASSERT_TRUE(lib.ok());
    EXPECT_NEAR(*lib, eg, 1e-6 + 1e-4 * eg);
    // Rows are independent: the thread count does not change the bytes.
    o.threads = 1;
    auto one = GgufEncode(View(w, {kRows, kCols}), t, o);
    ASSERT_TRUE(one.ok());
    EXPECT_EQ(one->bytes, gptq->bytes);
  }
  // Moments over other columns, or in activation order: an error naming the tensor.
  GgufEncodeOptions o;
  o.gptq = *factor;
  auto bad = GgufEncode(View(w, {kRows * 2, kCols / 2}), GgufType::kQ4_0, o);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("'w'"), std::string::npos);
  GptqOptions act;
  act.act_order = true;
  auto ordered = FactorGptq(**h, act);
  ASSERT_TRUE(ordered.ok());
  o.gptq = *ordered;
  EXPECT_FALSE(GgufEncode(View(w, {kRows, kCols}), GgufType::kQ4_0, o).ok());
}

TEST(GgufCodec, EdgeBlocksDecodeExactlyOrClose) {
  // Zeros, a constant, one spike, all negative, values near f16's smallest normal.
  std::vector<float> x(4 * 256, 0.0f);
  for (size_t i = 256; i < 512; ++i) x[i] = 0.25f;
  x[600] = 3.0f;
  for (size_t i = 768; i < 1024; ++i) x[i] = -1e-4f - 1e-6f * static_cast<float>(i % 7);
  for (GgufType t : GgufCodecs()) {
    SCOPED_TRACE(std::string(GgufTypeName(t)));
    auto r = GgufEncode(View(x, {4, 256}), t);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    const std::vector<float> y = Decode(t, r->bytes, x.size());
    for (size_t i = 0; i < 256; ++i) ASSERT_EQ(y[i], 0.0f) << i;
    for (float v : y) ASSERT_TRUE(std::isfinite(v));
    EXPECT_NEAR(y[300], 0.25f, 0.25f * 0.2f);
    EXPECT_NEAR(y[600], 3.0f, 3.0f * 0.2f);
    EXPECT_LT(RelRmse(x, y), 0.3);
  }
}

TEST(GgufCodec, GoldenQ8_0AndQ4_0Layout) {
  // One block of 32: values k * 0.5 for k = -16 .. 15 are exact in Q8_0 and Q4_0 at scale 0.5
  // (after the sign flip, the largest magnitude -8 sits on the negative side).
  std::vector<float> x(32);
  for (int k = 0; k < 32; ++k) x[k] = 0.25f * static_cast<float>(k - 16);
  auto q8 = GgufEncode(View(x, {32}), GgufType::kQ8_0);
  ASSERT_TRUE(q8.ok());
  EXPECT_EQ(Decode(GgufType::kQ8_0, q8->bytes, 32), x);
  std::vector<float> h(32);
  for (int k = 0; k < 32; ++k) h[k] = 0.5f * static_cast<float>((k % 16) - 8);
  auto q4 = GgufEncode(View(h, {32}), GgufType::kQ4_0);
  ASSERT_TRUE(q4.ok());
  ASSERT_EQ(q4->bytes.size(), 18u);
  EXPECT_EQ(Decode(GgufType::kQ4_0, q4->bytes, 32), h);
  uint16_t d;
  std::memcpy(&d, q4->bytes.data(), 2);
  EXPECT_EQ(F16BitsToF32(d), 0.5f);
  // Element j in the low nibble of byte j, element j + 16 in the high nibble: code = value/d + 8.
  for (int j = 0; j < 16; ++j) EXPECT_EQ(q4->bytes[2 + j], (j | (j << 4))) << j;
}

TEST(GgufCodec, BadInputIsAnErrorNamingTheTensor) {
  std::vector<float> x = Normal(2 * 100, 0.02f, 3);
  auto r = GgufEncode(View(x, {2, 100}), GgufType::kQ4_K);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("'w'"), std::string::npos);
  EXPECT_NE(r.status().message().find("multiple of 256"), std::string::npos);
  std::vector<float> y = Normal(256, 0.02f, 4);
  y[7] = NAN;
  r = GgufEncode(View(y, {256}), GgufType::kQ4_K);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kNonFinite);
  EXPECT_FALSE(ParseGgufType("Q9_9").ok());
  EXPECT_EQ(*ParseGgufType("q4_k"), GgufType::kQ4_K);
  std::vector<uint8_t> bytes(17);
  std::vector<float> out(32);
  EXPECT_FALSE(GgufDecode(GgufType::kQ4_0, bytes, 32, out.data()).ok());
}

// --- Container -------------------------------------------------------------------------------

std::string TempPath(const std::string& name) {
  return ::testing::TempDir() + "/" + name + "-" + std::to_string(::getpid());
}

std::vector<std::byte> ReadAll(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::byte> b(c.size());
  std::memcpy(b.data(), c.data(), c.size());
  return b;
}

// A small valid file: metadata of several types, a Q4_K, a Q8_0 and an F16 tensor.
std::string WriteSample(const std::string& path, std::vector<float>* x) {
  *x = Normal(2 * 256, 0.02f, 5);
  auto w = GgufWriter::Make(path);
  EXPECT_TRUE(w.ok());
  std::vector<GgufKV> kv = {{"general.architecture", 8, "\"diffusers\""},
                            {"general.quantization_version", 4, "2"},
                            {"test.f32", 6, "0.5"},
                            {"test.flag", 7, "true"},
                            {"test.big", 10, "12345678901"},
                            {"test.list", 9, "[\"a\", \"bc\"]"}};
  std::vector<GgufTensorSpec> specs = {{"a.weight", {2, 256}, GgufType::kQ4_K},
                                       {"b.weight", {2, 256}, GgufType::kQ8_0},
                                       {"c.bias", {3}, GgufType::kF16}};
  EXPECT_TRUE((*w)->Begin(kv, specs).ok());
  for (size_t i = 0; i < 2; ++i) {
    auto e = GgufEncode(View(*x, {2, 256}), specs[i].type);
    EXPECT_TRUE((*w)->WriteTensor(i, e->bytes).ok());
  }
  std::vector<float> c = {1.0f, -2.0f, 0.5f};
  auto e = GgufEncode(View(c, {3}), GgufType::kF16);
  EXPECT_TRUE((*w)->WriteTensor(2, e->bytes).ok());
  EXPECT_TRUE((*w)->Finish().ok());
  return path;
}

TEST(GgufFile, WriteThenReadRoundTrips) {
  std::vector<float> x;
  const std::string path = WriteSample(TempPath("rt.gguf"), &x);
  auto f = GgufFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const GgufHeader& h = (*f)->header();
  EXPECT_EQ(h.version, 3u);
  ASSERT_EQ(h.kv.size(), 6u);
  EXPECT_EQ(h.kv[0].first, "general.architecture");
  EXPECT_EQ(h.kv[0].second, "\"diffusers\"");
  EXPECT_EQ(h.kv[2].second, "0.5");
  EXPECT_EQ(h.kv[3].second, "true");
  EXPECT_EQ(h.kv[4].second, "12345678901");
  EXPECT_EQ(h.kv[5].second, "[\"a\",\"bc\"]");
  ASSERT_EQ((*f)->tensors().size(), 3u);
  const GgufTensorInfo* a = (*f)->Find("a.weight");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->shape, (std::vector<uint64_t>{2, 256}));
  EXPECT_EQ(a->type, 12u);
  EXPECT_EQ(a->offset % 32, 0u);
  std::vector<float> y(512);
  ASSERT_TRUE((*f)->Decode(*a, y.data()).ok());
  EXPECT_LT(RelRmse(x, y), 0.09);
  std::vector<float> c(3);
  ASSERT_TRUE((*f)->Decode(*(*f)->Find("c.bias"), c.data()).ok());
  EXPECT_EQ(c, (std::vector<float>{1.0f, -2.0f, 0.5f}));
  std::remove(path.c_str());
}

TEST(GgufFile, WriterRefusesMisuseAndLeavesNothingBehind) {
  const std::string path = TempPath("bad.gguf");
  {
    auto w = GgufWriter::Make(path);
    ASSERT_TRUE(w.ok());
    EXPECT_FALSE((*w)->Begin({}, {{"x", {3, 100}, GgufType::kQ4_K}}).ok());
  }
  {
    auto w = GgufWriter::Make(path);
    ASSERT_TRUE((*w)->Begin({}, {{"x", {32}, GgufType::kQ8_0}}).ok());
    std::vector<uint8_t> wrong(10);
    EXPECT_EQ((*w)->WriteTensor(0, wrong).code(), StatusCode::kSizeMismatch);
    EXPECT_FALSE((*w)->Finish().ok());  // tensor not written
  }
  EXPECT_FALSE(std::ifstream(path).good());
  EXPECT_FALSE(std::ifstream(path + ".tmp-" + std::to_string(::getpid())).good());
}

// Every prefix of a valid file is refused with an error (never a crash or a success).
TEST(GgufParse, EveryTruncationIsAnError) {
  std::vector<float> x;
  const std::string path = WriteSample(TempPath("trunc.gguf"), &x);
  const std::vector<std::byte> file = ReadAll(path);
  ASSERT_TRUE(ParseGguf(file, "f").ok());
  for (size_t n = 0; n < file.size(); n += (n < 600 ? 1 : 97)) {
    auto r = ParseGguf(std::span(file.data(), n), "f");
    ASSERT_FALSE(r.ok()) << n;
    EXPECT_EQ(r.status().message().rfind("f: ", 0), 0u) << r.status().message();
  }
  std::remove(path.c_str());
}

// A hand-built file: header, then `body`.
struct Builder {
  std::vector<std::byte> b;
  template <class T>
  Builder& Put(T v) {
    const auto* p = reinterpret_cast<const std::byte*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
    return *this;
  }
  Builder& Str(const std::string& s) {
    Put<uint64_t>(s.size());
    for (char c : s) b.push_back(static_cast<std::byte>(c));
    return *this;
  }
  Builder& Header(uint64_t tensors, uint64_t kv, uint32_t version = 3) {
    for (char c : std::string("GGUF")) b.push_back(static_cast<std::byte>(c));
    return Put<uint32_t>(version).Put<uint64_t>(tensors).Put<uint64_t>(kv);
  }
  Builder& Tensor(const std::string& name, std::vector<uint64_t> ne, uint32_t type,
                  uint64_t offset) {
    Str(name).Put<uint32_t>(static_cast<uint32_t>(ne.size()));
    for (uint64_t d : ne) Put<uint64_t>(d);
    return Put<uint32_t>(type).Put<uint64_t>(offset);
  }
  Builder& PadTo(size_t align, size_t data_bytes) {
    while (b.size() % align) b.push_back(std::byte{0});
    b.resize(b.size() + data_bytes);
    return *this;
  }
};

std::string Error(const Builder& f) {
  auto r = ParseGguf(f.b, "f.gguf");
  return r.ok() ? "OK" : r.status().ToString();
}

TEST(GgufParse, MalformedFilesAreNamedErrors) {
  auto has = [](const std::string& s, const std::string& what) {
    return s.find(what) != std::string::npos;
  };
  Builder ok;
  ok.Header(1, 0).Tensor("t", {32}, 8, 0).PadTo(32, 34);
  EXPECT_EQ(Error(ok), "OK");
  Builder magic = ok;
  magic.b[0] = std::byte{'X'};
  EXPECT_TRUE(has(Error(magic), "not a GGUF file"));
  EXPECT_TRUE(has(Error(Builder().Header(0, 0, 1).PadTo(1, 8)), "version 1"));
  EXPECT_TRUE(has(Error(Builder().Header(0, 0, 0x03000000u).PadTo(1, 8)), "big-endian"));
  EXPECT_TRUE(has(Error(Builder().Header(1ull << 40, 0).PadTo(1, 64)), "exceeds the limit"));
  EXPECT_TRUE(has(Error(Builder().Header(2, 0).PadTo(1, 8)), "cannot fit"));
  EXPECT_TRUE(has(Error(Builder().Header(0, 1).Put<uint64_t>(1000).PadTo(1, 8)), "past the end"));
  EXPECT_TRUE(has(Error(Builder()
                            .Header(0, 2)
                            .Str("k")
                            .Put<uint32_t>(4)
                            .Put<uint32_t>(1)
                            .Str("k")
                            .Put<uint32_t>(4)
                            .Put<uint32_t>(1)),
                  "appears twice"));
  EXPECT_TRUE(has(Error(Builder().Header(0, 1).Str("k").Put<uint32_t>(99).Put<uint64_t>(0)),
                  "unknown value type 99"));
  EXPECT_TRUE(
      has(Error(Builder().Header(0, 1).Str("k").Put<uint32_t>(7).Put<uint8_t>(2).PadTo(1, 16)),
          "boolean 2"));
  EXPECT_TRUE(has(Error(Builder()
                            .Header(0, 1)
                            .Str("general.alignment")
                            .Put<uint32_t>(4)
                            .Put<uint32_t>(48)
                            .PadTo(1, 16)),
                  "power of two"));
  Builder nested;
  nested.Header(0, 1).Str("k").Put<uint32_t>(9).Put<uint32_t>(9).Put<uint64_t>(1);
  nested.Put<uint32_t>(9).Put<uint64_t>(1).Put<uint32_t>(4).Put<uint64_t>(1).Put<uint32_t>(0);
  EXPECT_TRUE(has(Error(nested), "nested too deep"));
  EXPECT_TRUE(has(
      Error(Builder().Header(2, 0).Tensor("t", {32}, 8, 0).Tensor("t", {32}, 8, 64).PadTo(32, 128)),
      "appears twice"));
  EXPECT_TRUE(has(Error(Builder().Header(1, 0).Tensor("t", {32}, 77, 0).PadTo(32, 64)),
                  "unknown ggml type 77"));
  EXPECT_TRUE(has(Error(Builder().Header(1, 0).Tensor("t", {100}, 12, 0).PadTo(32, 512)),
                  "not a multiple of Q4_K's block of 256"));
  EXPECT_TRUE(
      has(Error(Builder().Header(1, 0).Tensor("t", {}, 0, 0).PadTo(32, 64)), "0 dimensions"));
  EXPECT_TRUE(has(Error(Builder().Header(1, 0).Tensor("t", {1, 1, 1, 1, 1}, 0, 0).PadTo(32, 64)),
                  "5 dimensions"));
  EXPECT_TRUE(
      has(Error(Builder().Header(1, 0).Tensor("t", {1ull << 40, 1ull << 40}, 0, 0).PadTo(32, 64)),
          "overflow"));
  EXPECT_TRUE(has(Error(Builder().Header(1, 0).Tensor("t", {32}, 8, 16).PadTo(32, 64)),
                  "not a multiple of the alignment"));
  EXPECT_TRUE(has(Error(Builder().Header(1, 0).Tensor("t", {32}, 8, 0).PadTo(32, 33)),
                  "runs past the end"));
  EXPECT_TRUE(has(
      Error(Builder().Header(2, 0).Tensor("t", {64}, 8, 0).Tensor("u", {32}, 8, 32).PadTo(32, 128)),
      "overlap"));
  Builder utf8;
  utf8.Header(0, 1).Str("\xff\xfe").Put<uint32_t>(4).Put<uint32_t>(1);
  EXPECT_TRUE(has(Error(utf8), "not UTF-8"));
}

}  // namespace
}  // namespace arrowquant
