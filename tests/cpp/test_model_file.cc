#include <arrow/api.h>
#include <arrow/io/file.h>
#include <arrow/util/key_value_metadata.h>
#include <gtest/gtest.h>
#include <parquet/arrow/reader.h>
#include <parquet/arrow/writer.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "arrowquant/model_file.h"
#include "safetensors_builder.h"

namespace arrowquant {
namespace {

namespace fs = std::filesystem;

std::vector<float> Gaussian(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 0.02f);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

TensorView View(const std::vector<float>& v, std::vector<uint64_t> shape, const char* name = "w") {
  return TensorView{name, DType::kF32, std::move(shape), std::as_bytes(std::span<const float>(v))};
}

std::vector<float> Deq(const QuantizedTensor& q) {
  std::vector<float> y(q.num_elements());
  EXPECT_TRUE(Dequantize(q, DType::kF32, std::as_writable_bytes(std::span<float>(y))).ok());
  return y;
}

class ModelFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string P(const char* n) const { return (dir_ / n).string(); }
  fs::path dir_;
};

// Writes a small model: every quantized format on one weight, plus raw tensors.
std::string WriteSample(const std::string& path, uint64_t max_chunk = 1ull << 30,
                        std::vector<QuantizedTensor>* kept = nullptr) {
  ModelMetadata meta;
  meta.tool_version = "test";
  meta.recipe_json = R"({"profile":"local"})";
  meta.modality = "image";
  auto w = ModelWriter::Open(path, meta, ModelWriterOptions{max_chunk});
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  const auto data = Gaussian(40 * 200, 1);
  std::vector<QuantizedTensor> qs;
  for (int bits : {2, 3, 4, 8}) {
    for (auto storage : {ScaleStorage::kF16, ScaleStorage::kF32, ScaleStorage::kCoded}) {
      for (auto scheme : {Scheme::kAsymmetric, Scheme::kSymmetric}) {
        QuantSpec spec{bits, 64, scheme, Grid::kSearch, storage};
        spec.scale_bits = 7;
        auto q = Quantize(View(data, {40, 200}), spec);
        EXPECT_TRUE(q.ok());
        qs.push_back(std::move(*q));
      }
    }
  }
  for (size_t i = 0; i < qs.size(); ++i) {
    TensorRecord r;
    r.name = "q." + std::to_string(i) + "." + qs[i].spec.ToString();
    r.component = "unet";
    r.quantized = &qs[i];
    r.metrics = ErrorMetrics{0.1, 0.05, 26.0, 0.999, 0.01, qs[i].num_elements()};
    if (i == 0) {
      r.time_aware = TimeAwareParams{
          4, {0, 250, 500, 750, 1000}, 8, {0.1f, 0.2f, 0.3f, 0.4f}, {128, 127, 129, 128}};
      r.spatial = SpatialParams{std::vector<float>(200, 1.5f), 0.5f};
      r.activation_stats =
          ActivationStats{std::vector<float>(200, -1.0f), std::vector<float>(200, 2.0f),
                          std::vector<float>(200, 2.0f)};
    }
    EXPECT_TRUE((*w)->Write(r).ok());
  }
  std::vector<uint16_t> bias(37, 0x3c00);
  TensorRecord raw;
  raw.name = "norm.bias";
  raw.component = "unet";
  raw.raw = std::as_bytes(std::span<const uint16_t>(bias));
  raw.raw_dtype = DType::kF16;
  raw.raw_shape = {37};
  EXPECT_TRUE((*w)->Write(raw).ok());
  std::vector<int64_t> ids = {1, 2, 3};
  TensorRecord ints{"position_ids", "text_encoder"};
  ints.raw = std::as_bytes(std::span<const int64_t>(ids));
  ints.raw_dtype = DType::kI64;
  ints.raw_shape = {1, 3};
  EXPECT_TRUE((*w)->Write(ints).ok());
  EXPECT_EQ((*w)->Write(raw).code(), StatusCode::kDuplicateName);
  EXPECT_TRUE((*w)->Close().ok());
  if (kept) *kept = std::move(qs);
  return path;
}

TEST_F(ModelFileTest, RoundTripIsBitIdentical) {
  for (uint64_t max_chunk : {uint64_t{1} << 30, uint64_t{300}}) {  // 300 bytes: forces splits
    std::vector<QuantizedTensor> qs;
    const auto path = WriteSample(P("m.parquet"), max_chunk, &qs);
    EXPECT_FALSE(fs::exists(path + ".tmp-" + std::to_string(::getpid())));
    auto r = ModelReader::Open(path);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_FALSE((*r)->legacy());
    EXPECT_EQ((*r)->metadata().at("arrowquant.format"), "arrowquant-parquet");
    EXPECT_EQ((*r)->metadata().at("arrowquant.recipe"), R"({"profile":"local"})");
    ASSERT_EQ((*r)->tensors().size(), qs.size() + 2);
    for (size_t i = 0; i < qs.size(); ++i) {
      const auto name = "q." + std::to_string(i) + "." + qs[i].spec.ToString();
      auto back = (*r)->ReadQuantized(name);
      ASSERT_TRUE(back.ok()) << back.status().ToString();
      EXPECT_EQ(back->codes, qs[i].codes);
      EXPECT_EQ(back->scales, qs[i].scales);
      EXPECT_EQ(back->zeros, qs[i].zeros);
      EXPECT_EQ(back->super_scales, qs[i].super_scales);
      EXPECT_EQ(back->spec.ToString(), qs[i].spec.ToString());
      std::vector<float> y(qs[i].num_elements());
      ASSERT_TRUE(
          (*r)->DequantizeAsStored(name, DType::kF32, std::as_writable_bytes(std::span<float>(y)))
              .ok());
      EXPECT_EQ(y, Deq(qs[i]));
      // Dequantize multiplies equalized tensors (stored W / s) back by s: q.0 has s = 1.5.
      std::vector<float> w(y.size());
      ASSERT_TRUE(
          (*r)->Dequantize(name, DType::kF32, std::as_writable_bytes(std::span<float>(w))).ok());
      for (size_t k = 0; k < w.size(); ++k) ASSERT_EQ(w[k], y[k] * (i == 0 ? 1.5f : 1.0f)) << name;
      const auto* info = (*r)->Find(name);
      ASSERT_TRUE(info->metrics.has_value());
      EXPECT_EQ(info->metrics->sqnr_db, 26.0);
      if (max_chunk == 300) EXPECT_GT(info->rows.size(), 1u) << name;
    }
    const auto* first = (*r)->Find("q.0." + qs[0].spec.ToString());
    ASSERT_TRUE(first->time_aware && first->spatial && first->activation_stats);
    EXPECT_EQ(first->time_aware->group_bounds, (std::vector<int32_t>{0, 250, 500, 750, 1000}));
    EXPECT_EQ(first->time_aware->act_zero_points[2], 129);
    EXPECT_EQ(first->spatial->smoothing_alpha, 0.5f);
    EXPECT_EQ(first->activation_stats->max.size(), 200u);
    auto bias = (*r)->ReadRaw("norm.bias");
    ASSERT_TRUE(bias.ok());
    EXPECT_EQ(bias->size(), 74u);
    std::vector<float> fb(37);
    ASSERT_TRUE(
        (*r)->Dequantize("norm.bias", DType::kF32, std::as_writable_bytes(std::span<float>(fb)))
            .ok());
    EXPECT_EQ(fb[5], 1.0f);
    auto ids = (*r)->ReadRaw("position_ids");
    ASSERT_TRUE(ids.ok());
    int64_t third;
    std::memcpy(&third, ids->data() + 16, 8);
    EXPECT_EQ(third, 3);
    EXPECT_EQ((*r)->Find("position_ids")->component, "text_encoder");
    EXPECT_EQ((*r)->Dequantize("position_ids", DType::kF32, {}).code(), StatusCode::kUnsupported);
    EXPECT_EQ((*r)->ReadQuantized("nope").status().code(), StatusCode::kNotFound);
  }
}

// Many tensors into caller buffers from several threads (and from several callers at once):
// the same bytes as one Dequantize per tensor, for any thread count. Run under TSan by make tsan.
// What a size budget counts: codes as they are, the scale buffers at their zstd size, never
// more than the uncompressed buffers; and rows that repeat compress (their scale codes repeat).
TEST_F(ModelFileTest, StoredPayloadBytesIsTheCompressedPayload) {
  const auto data = Gaussian(40 * 200, 3);
  std::vector<float> repeated(40 * 200);
  for (size_t i = 0; i < repeated.size(); ++i) repeated[i] = data[i % 200];
  const std::vector<float>* inputs[] = {&data, &repeated};
  for (const auto* w : inputs) {
    auto q = Quantize(View(*w, {40, 200}), QuantSpec::Recommended(2));
    ASSERT_TRUE(q.ok());
    auto stored = StoredPayloadBytes(*q);
    ASSERT_TRUE(stored.ok()) << stored.status().ToString();
    EXPECT_GE(*stored, q->codes.size());
    EXPECT_LE(*stored, q->nbytes());
    if (w == &repeated) {
      const uint64_t scale_bytes = q->nbytes() - q->codes.size();
      EXPECT_LT(*stored - q->codes.size(), scale_bytes / 4) << "identical rows' scales repeat";
    }
  }
}

TEST_F(ModelFileTest, ModelReaderLoadManyInParallelMatchesOneByOne) {
  const std::string path = WriteSample(P("m.aq.parquet"), 4096);  // chunked rows too
  auto r = ModelReader::Open(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const ModelReader& reader = **r;
  std::vector<std::vector<std::byte>> want, got1, got2;
  std::vector<LoadRequest> req1, req2;
  for (const auto& t : reader.tensors()) {
    const bool ints = t.quant_type == "raw" && !Traits(t.raw_dtype).quantizable;
    const DType dt = ints ? t.raw_dtype : DType::kF16;
    const size_t bytes = t.num_params * ElementBytes(dt);
    want.emplace_back(bytes);
    if (ints) {
      auto raw = reader.ReadRaw(t.name);
      ASSERT_TRUE(raw.ok());
      want.back() = *raw;
    } else {
      ASSERT_TRUE(reader.Dequantize(t.name, dt, want.back(), 1).ok()) << t.name;
    }
    got1.emplace_back(bytes);
    got2.emplace_back(bytes);
    req1.push_back({t.name, dt, got1.back()});
    req2.push_back({t.name, dt, got2.back()});
  }
  std::thread other([&] { EXPECT_TRUE(reader.Load(req2, 3).ok()); });
  ASSERT_TRUE(reader.Load(req1, 4).ok());
  other.join();
  EXPECT_EQ(got1, want);
  EXPECT_EQ(got2, want);
  // Checked before anything is read: a wrong size or an unknown name, named in the error.
  std::vector<std::byte> small(3);
  std::vector<LoadRequest> bad = {{reader.tensors()[0].name, DType::kF16, small}};
  auto st = reader.Load(bad, 2);
  EXPECT_EQ(st.code(), StatusCode::kSizeMismatch);
  EXPECT_NE(st.message().find(reader.tensors()[0].name), std::string::npos);
  bad = {{"nope", DType::kF16, small}};
  EXPECT_EQ(reader.Load(bad, 2).code(), StatusCode::kNotFound);
  bad = {{"position_ids", DType::kF16, small}};
  EXPECT_EQ(reader.Load(bad, 2).code(), StatusCode::kInvalidArgument);
}

TEST_F(ModelFileTest, OutputFolderResolvesToItsModelFile) {
  fs::create_directories(dir_ / "out");
  WriteSample(P("out/model.aq.parquet"));
  auto r = ModelReader::Open(P("out"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->path(), P("out/model.aq.parquet"));
  auto none = ModelReader::Open(dir_.string());
  EXPECT_EQ(none.status().code(), StatusCode::kNotFound);
  EXPECT_EQ(ModelReader::Open(P("missing")).status().code(), StatusCode::kNotFound);
}

TEST_F(ModelFileTest, AbortLeavesNothing) {
  {
    auto w = ModelWriter::Open(P("a.parquet"), ModelMetadata{});
    ASSERT_TRUE(w.ok());
    std::vector<float> v(64, 1.0f);
    TensorRecord r{"x", ""};
    r.raw = std::as_bytes(std::span<const float>(v));
    r.raw_shape = {64};
    ASSERT_TRUE((*w)->Write(r).ok());
    r.raw_shape = {65};
    EXPECT_EQ((*w)->Write(TensorRecord{"y", "", nullptr, r.raw, DType::kF32, {65}}).code(),
              StatusCode::kSizeMismatch);
  }  // destroyed without Close()
  EXPECT_TRUE(fs::is_empty(dir_));
  EXPECT_FALSE(ModelWriter::Open((dir_ / "no" / "dir.parquet").string(), ModelMetadata{}).ok());
}

std::string ReadAll(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}
void WriteAll(const std::string& p, const std::string& s) {
  std::ofstream(p, std::ios::binary) << s;
}

TEST_F(ModelFileTest, CorruptFilesGiveClearErrors) {
  const auto path = WriteSample(P("m.parquet"));
  const std::string good = ReadAll(path);
  auto expect_error = [&](const std::string& bytes, const char* label) {
    WriteAll(P("bad.parquet"), bytes);
    auto r = ModelReader::Open(P("bad.parquet"));
    Status st = r.status();
    if (r.ok()) {  // some damage only shows when the payload is read
      for (const auto& t : (*r)->tensors()) {
        std::vector<float> y(t.num_params);
        st = (*r)->Dequantize(t.name, DType::kF32, std::as_writable_bytes(std::span<float>(y)));
        if (!st.ok()) break;
        if (t.quant_type == "raw") {
          auto raw = (*r)->ReadRaw(t.name);
          st = raw.status();
          if (!st.ok()) break;
        }
      }
    }
    EXPECT_FALSE(st.ok()) << label;
    EXPECT_NE(st.message().find("bad.parquet"), std::string::npos)
        << label << ": " << st.ToString();
    return st;
  };
  (void)expect_error(good.substr(0, good.size() / 2), "truncated");
  (void)expect_error(good.substr(0, good.size() - 3), "truncated footer");
  (void)expect_error(good.substr(0, 10), "tiny");
  std::string magic = good;
  magic.replace(magic.size() - 4, 4, "PAR0");
  (void)expect_error(magic, "wrong magic");
  // Flip a byte inside the first tensor's packed codes: the page checksum catches it.
  std::string flipped = good;
  flipped[good.size() / 3] = static_cast<char>(flipped[good.size() / 3] ^ 0x5a);
  const Status st = expect_error(flipped, "flipped byte");
  EXPECT_TRUE(st.code() == StatusCode::kCorrupt || st.code() == StatusCode::kFormatInvalid)
      << st.ToString();
  (void)expect_error("", "empty");
}

// Rewrites the sample through Arrow with one change, to test schema and metadata checks.
void Rewrite(
    const std::string& in, const std::string& out,
    const std::function<std::shared_ptr<arrow::Table>(std::shared_ptr<arrow::Table>)>& edit) {
  auto reader = parquet::arrow::OpenFile(arrow::io::ReadableFile::Open(in).ValueOrDie(),
                                         arrow::default_memory_pool())
                    .ValueOrDie();
  auto table = edit(reader->ReadTable().ValueOrDie());
  auto sink = arrow::io::FileOutputStream::Open(out).ValueOrDie();
  ASSERT_TRUE(
      parquet::arrow::WriteTable(*table, arrow::default_memory_pool(), sink, 1024,
                                 parquet::default_writer_properties(),
                                 parquet::ArrowWriterProperties::Builder().store_schema()->build())
          .ok());
  ASSERT_TRUE(sink->Close().ok());
}

TEST_F(ModelFileTest, SchemaAndVersionChecks) {
  const auto path = WriteSample(P("m.parquet"));
  auto with_meta = [](std::shared_ptr<arrow::Table> t, const std::string& version) {
    auto kv = arrow::KeyValueMetadata::Make({"arrowquant.format", "arrowquant.format_version"},
                                            {"arrowquant-parquet", version});
    return t->ReplaceSchemaMetadata(kv);
  };
  Rewrite(path, P("v9.parquet"), [&](auto t) { return with_meta(t, "9.0"); });
  EXPECT_EQ(ModelReader::Open(P("v9.parquet")).status().code(), StatusCode::kUnsupported);
  Rewrite(path, P("v2.parquet"), [&](auto t) { return with_meta(t, "2.0"); });
  EXPECT_TRUE(ModelReader::Open(P("v2.parquet")).ok())
      << ModelReader::Open(P("v2.parquet")).status().ToString();
  Rewrite(path, P("nocol.parquet"), [&](auto t) {
    return with_meta(t->RemoveColumn(t->schema()->GetFieldIndex("scales")).ValueOrDie(), "2.0");
  });
  auto r = ModelReader::Open(P("nocol.parquet"));
  EXPECT_EQ(r.status().code(), StatusCode::kFormatInvalid);
  EXPECT_NE(r.status().message().find("'scales'"), std::string::npos);
  Rewrite(path, P("type.parquet"), [&](auto t) {
    const int i = t->schema()->GetFieldIndex("group_size");
    arrow::StringBuilder b;
    for (int64_t k = 0; k < t->num_rows(); ++k) (void)b.Append("x");
    std::shared_ptr<arrow::Array> a;
    (void)b.Finish(&a);
    return with_meta(t->SetColumn(i, arrow::field("group_size", arrow::utf8()),
                                  std::make_shared<arrow::ChunkedArray>(a))
                         .ValueOrDie(),
                     "2.0");
  });
  EXPECT_EQ(ModelReader::Open(P("type.parquet")).status().code(), StatusCode::kFormatInvalid);
  // Codes one byte short of what shape and format need.
  Rewrite(path, P("short.parquet"), [&](auto t) {
    const int i = t->schema()->GetFieldIndex("data");
    // Read back without an embedded Arrow schema, the payload columns are binary.
    EXPECT_EQ(t->column(i)->type()->id(), arrow::Type::BINARY);
    auto data = std::static_pointer_cast<arrow::BinaryArray>(t->column(i)->chunk(0));
    arrow::BinaryBuilder b;
    for (int64_t k = 0; k < data->length(); ++k) {
      const auto v = data->GetView(k);
      (void)b.Append(v.substr(0, k == 0 ? v.size() - 1 : v.size()));
    }
    std::shared_ptr<arrow::Array> a;
    (void)b.Finish(&a);
    return with_meta(
        t->SetColumn(i, t->schema()->field(i), std::make_shared<arrow::ChunkedArray>(a))
            .ValueOrDie(),
        "2.0");
  });
  auto shortr = ModelReader::Open(P("short.parquet"));
  ASSERT_TRUE(shortr.ok()) << shortr.status().ToString();
  const auto first = (*shortr)->tensors()[0].name;
  auto q = (*shortr)->ReadQuantized(first);
  EXPECT_EQ(q.status().code(), StatusCode::kCorrupt);
  EXPECT_NE(q.status().message().find("codes hold"), std::string::npos) << q.status().ToString();
  Rewrite(path, P("nometa.parquet"), [&](auto t) { return t->ReplaceSchemaMetadata(nullptr); });
  auto plain = ModelReader::Open(P("nometa.parquet"));
  EXPECT_EQ(plain.status().code(), StatusCode::kFormatInvalid) << plain.status().ToString();
}

}  // namespace
}  // namespace arrowquant
