// A model as a Parquet dataset (ModelDatasetWriter, ModelReader over a folder): the files split
// where the rule says, read back as the single file's model, and damaged or mixed datasets are
// clear errors naming the file.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "arrowquant/model_file.h"
#include "safetensors_builder.h"

namespace arrowquant {
namespace {

namespace fs = std::filesystem;

class ModelDatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::TempDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::mt19937 rng(7);
    std::normal_distribution<float> d(0.0f, 0.02f);
    // Tensors of 4, 16, 4, 64, 8 KiB of f32 values, every other one quantized.
    for (uint64_t kib : {4, 16, 4, 64, 8}) {
      std::vector<float> v(kib * 256);
      for (auto& x : v) x = d(rng);
      values_.push_back(std::move(v));
    }
    for (size_t i = 0; i < values_.size(); i += 2) {
      const auto& v = values_[i];
      TensorView view{"w", DType::kF32, {v.size() / 64, 64}, std::as_bytes(std::span(v))};
      auto q = Quantize(view, QuantSpec::Recommended(4));
      ASSERT_TRUE(q.ok());
      quantized_.emplace(i, std::move(*q));
    }
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string P(const std::string& n) const { return (dir_ / n).string(); }

  ModelMetadata Meta(const std::string& recipe = R"({"r":1})") const {
    ModelMetadata m;
    m.tool_version = "test";
    m.recipe_json = recipe;
    m.modality = "image";
    return m;
  }
  TensorRecord Record(size_t i) const {
    TensorRecord r;
    r.name = "t" + std::to_string(i);
    r.component = "unet";
    if (const auto it = quantized_.find(i); it != quantized_.end()) {
      r.quantized = &it->second;
    } else {
      r.raw = std::as_bytes(std::span(values_[i]));
      r.raw_shape = {values_[i].size()};
    }
    return r;
  }
  uint64_t PayloadBytes(size_t i) const {
    const auto it = quantized_.find(i);
    if (it == quantized_.end()) return values_[i].size() * 4;
    const QuantizedTensor& q = it->second;
    return q.codes.size() + q.scales.size() + q.zeros.size() + q.super_scales.size();
  }
  Status Write(const std::string& path, uint64_t max_bytes,
               const std::string& recipe = R"({"r":1})") {
    ModelDatasetOptions o;
    o.max_file_bytes = max_bytes;
    AQ_ASSIGN_OR_RETURN(auto w, ModelDatasetWriter::Open(path, Meta(recipe), o));
    for (size_t i = 0; i < values_.size(); ++i) AQ_RETURN_IF_ERROR(w->Write(Record(i)));
    return w->Close();
  }

  fs::path dir_;
  std::vector<std::vector<float>> values_;
  std::map<size_t, QuantizedTensor> quantized_;
};

TEST_F(ModelDatasetTest, FilesSplitByPayloadAndReadAsTheSingleFile) {
  ASSERT_TRUE(Write(P("one.parquet"), 0).ok());
  const uint64_t max = 20 << 10;
  ASSERT_TRUE(Write(P("set"), max).ok());
  // The rule, by hand: a file closes before the tensor that would take it past `max`.
  std::vector<std::vector<std::string>> expect(1);
  uint64_t in_file = 0;
  for (size_t i = 0; i < values_.size(); ++i) {
    if (in_file > 0 && in_file + PayloadBytes(i) > max) {
      expect.emplace_back();
      in_file = 0;
    }
    expect.back().push_back("t" + std::to_string(i));
    in_file += PayloadBytes(i);
  }
  ASSERT_GT(expect.size(), 2u);
  auto one = ModelReader::Open(P("one.parquet"));
  auto set = ModelReader::Open(P("set"));
  ASSERT_TRUE(one.ok() && set.ok()) << set.status().ToString();
  const auto files = (*set)->files();
  ASSERT_EQ(files.size(), expect.size());
  for (size_t f = 0; f < files.size(); ++f) {
    EXPECT_EQ(fs::path(files[f]).filename(), DatasetFileName(int(f) + 1, int(files.size())));
    auto alone = ModelReader::Open(files[f]);  // each file is a model file of its own
    ASSERT_TRUE(alone.ok());
    std::vector<std::string> names;
    for (const auto& t : (*alone)->tensors()) names.push_back(t.name);
    EXPECT_EQ(names, expect[f]);
  }
  ASSERT_EQ((*set)->tensors().size(), (*one)->tensors().size());
  for (size_t i = 0; i < values_.size(); ++i) {
    const std::string name = "t" + std::to_string(i);
    std::vector<float> a(values_[i].size()), b(values_[i].size());
    ASSERT_TRUE((*one)->Dequantize(name, DType::kF32, std::as_writable_bytes(std::span(a))).ok());
    ASSERT_TRUE((*set)->Dequantize(name, DType::kF32, std::as_writable_bytes(std::span(b))).ok());
    EXPECT_EQ(a, b) << name;
    EXPECT_EQ((*set)->Find(name)->stored_bytes, (*one)->Find(name)->stored_bytes);
  }
  auto meta = (*set)->metadata(), single = (*one)->metadata();
  meta.erase("arrowquant.created");
  single.erase("arrowquant.created");
  EXPECT_EQ(meta, single);  // the totals summed, the per-file index gone
  std::vector<LoadRequest> reqs;
  std::vector<std::vector<uint16_t>> bufs;
  for (size_t i = 0; i < values_.size(); ++i) bufs.emplace_back(values_[i].size());
  for (size_t i = 0; i < values_.size(); ++i) {
    reqs.push_back(
        {"t" + std::to_string(i), DType::kF16, std::as_writable_bytes(std::span(bufs[i]))});
  }
  EXPECT_TRUE((*set)->Load(reqs, 2).ok());
  // A tensor larger than the limit gets a file of its own; no limit worth a file: still one.
  ASSERT_TRUE(Write(P("tiny"), 1).ok());
  EXPECT_EQ((*ModelReader::Open(P("tiny")))->files().size(), values_.size());
}

TEST_F(ModelDatasetTest, OutputFolderAndReplacement) {
  fs::create_directories(dir_ / "out");
  ASSERT_TRUE(Write(P("out/model.aq.parquet"), 20 << 10).ok());
  auto r = ModelReader::Open(P("out"));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)->path(), P("out/model.aq.parquet"));
  EXPECT_EQ(*ResolveModelPath(P("out/model.aq.parquet")), P("out/model.aq.parquet"));
  // Written again with fewer files: the old files do not linger.
  ASSERT_TRUE(Write(P("out/model.aq.parquet"), 1 << 30).ok());
  EXPECT_EQ((*ModelReader::Open(P("out")))->files().size(), 1u);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_ / "out"), fs::directory_iterator()), 1);
  // An aborted writer leaves nothing.
  {
    ModelDatasetOptions o;
    o.max_file_bytes = 1;
    auto w = ModelDatasetWriter::Open(P("gone"), Meta(), o);
    ASSERT_TRUE(w.ok());
    ASSERT_TRUE((*w)->Write(Record(0)).ok());
    ASSERT_TRUE((*w)->Write(Record(1)).ok());
    EXPECT_EQ((*w)->Write(Record(1)).code(), StatusCode::kDuplicateName);  // across files
  }
  EXPECT_FALSE(fs::exists(P("gone")));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(ModelDatasetTest, DamagedOrMixedDatasetsAreClearErrors) {
  auto expect_error = [&](const std::string& path, StatusCode code, const std::string& says) {
    auto r = ModelReader::Open(path);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), code) << r.status().ToString();
    EXPECT_NE(r.status().message().find(says), std::string::npos) << r.status().ToString();
  };
  ASSERT_TRUE(Write(P("a"), 20 << 10).ok());
  const auto files = (*ModelReader::Open(P("a")))->files();
  const int n = static_cast<int>(files.size());
  // A missing file.
  fs::copy(P("a"), P("missing"));
  fs::remove(dir_ / "missing" / DatasetFileName(2, n));
  expect_error(P("missing"), StatusCode::kNotFound, DatasetFileName(2, n) + " is missing");
  // A stray Parquet file; hidden files and other files are left alone.
  fs::copy(P("a"), P("stray"));
  fs::copy(files[0], dir_ / "stray" / ".model-00001.parquet.tmp");
  fs::copy(files[0], dir_ / "stray" / "README.md");
  EXPECT_TRUE(ModelReader::Open(P("stray")).ok());
  fs::copy(files[0], dir_ / "stray" / "extra.parquet");
  expect_error(P("stray"), StatusCode::kFormatInvalid, "'extra.parquet' is not a file");
  // Two files swapped: each footer's index disagrees with its name.
  fs::copy(P("a"), P("swapped"));
  fs::rename(dir_ / "swapped" / DatasetFileName(1, n), P("tmp"));
  fs::rename(dir_ / "swapped" / DatasetFileName(2, n), dir_ / "swapped" / DatasetFileName(1, n));
  fs::rename(P("tmp"), dir_ / "swapped" / DatasetFileName(2, n));
  expect_error(P("swapped"), StatusCode::kFormatInvalid, DatasetFileName(1, n) + ": its footer");
  // A file of another job's dataset.
  ASSERT_TRUE(Write(P("b"), 20 << 10, R"({"r":2})").ok());
  fs::copy(P("a"), P("mixed"));
  fs::copy_file(dir_ / "b" / DatasetFileName(2, n), dir_ / "mixed" / DatasetFileName(2, n),
                fs::copy_options::overwrite_existing);
  expect_error(P("mixed"), StatusCode::kFormatInvalid, "'arrowquant.recipe' differs");
  // Counts that disagree.
  fs::copy(P("a"), P("counts"));
  fs::copy_file(files[0], dir_ / "counts" / DatasetFileName(1, n + 1));
  expect_error(P("counts"), StatusCode::kFormatInvalid, "is one of");
  // A folder with neither a model file nor dataset files.
  fs::create_directories(dir_ / "empty");
  expect_error(P("empty"), StatusCode::kNotFound, "dataset files");
}

}  // namespace
}  // namespace arrowquant
