#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <unistd.h>

#include <cstring>

#include "arrowquant/safetensors.h"
#include "safetensors_builder.h"

namespace arrowquant {
namespace {

using testing::Entry;
using testing::RawFile;
using testing::ValidFile;

std::span<const std::byte> Bytes(const std::string& s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

std::string F32Bytes(std::initializer_list<float> v) {
  std::string out(v.size() * 4, '\0');
  std::memcpy(out.data(), std::data(v), out.size());
  return out;
}

const std::string kT = R"("t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

struct Malformed {
  const char* label;
  std::string bytes;
  StatusCode expected;
};

std::vector<Malformed> MalformedCorpus() {
  const std::string d8(8, '\0');
  const std::string valid = ValidFile({{"a", "F32", {2, 2}, std::string(16, '\1')}});
  return {
      {"empty file", "", StatusCode::kFileTooSmall},
      {"seven bytes", std::string(7, '\0'), StatusCode::kFileTooSmall},
      {"header claims 2^62 bytes", RawFile("{}", "", int64_t{1} << 62),
       StatusCode::kHeaderTooLarge},
      {"header just over 100 MB", RawFile("{}", "", 100'000'001), StatusCode::kHeaderTooLarge},
      {"header past end of file", RawFile("{}", "", 1000), StatusCode::kHeaderOutOfBounds},
      {"truncated inside header", valid.substr(0, 20), StatusCode::kHeaderOutOfBounds},
      {"non-UTF-8 tensor name", RawFile("{\"t\xff\":{}}", ""), StatusCode::kHeaderNotUtf8},
      {"overlong UTF-8", RawFile("{\"\xc0\xaf\":1}", ""), StatusCode::kHeaderNotUtf8},
      {"UTF-16 surrogate", RawFile("{\"\xed\xa0\x80\":1}", ""), StatusCode::kHeaderNotUtf8},
      {"header not starting with {", RawFile(" {}", ""), StatusCode::kHeaderInvalidJson},
      {"header is an array", RawFile("[]", ""), StatusCode::kHeaderInvalidJson},
      {"truncated JSON", RawFile("{\"t\":{\"dtype\":", ""), StatusCode::kHeaderInvalidJson},
      {"zero-length header", RawFile("", ""), StatusCode::kHeaderInvalidJson},
      {"entry not an object", RawFile("{\"t\":5}", ""), StatusCode::kHeaderInvalidEntry},
      {"missing dtype", RawFile(R"({"t":{"shape":[2],"data_offsets":[0,8]}})", d8),
       StatusCode::kHeaderInvalidEntry},
      {"missing shape", RawFile(R"({"t":{"dtype":"F32","data_offsets":[0,8]}})", d8),
       StatusCode::kHeaderInvalidEntry},
      {"negative dim", RawFile(R"({"t":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", d8),
       StatusCode::kHeaderInvalidEntry},
      {"float dim", RawFile(R"({"t":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", d8),
       StatusCode::kHeaderInvalidEntry},
      {"three offsets", RawFile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", d8),
       StatusCode::kHeaderInvalidEntry},
      {"offset beyond u64",
       RawFile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,1e30]}})", d8),
       StatusCode::kHeaderInvalidEntry},
      {"unknown dtype", RawFile(R"({"t":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})", d8),
       StatusCode::kUnknownDtype},
      {"shape product overflows",
       RawFile(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296,2],"data_offsets":[0,8]}})",
               d8),
       StatusCode::kShapeOverflow},
      {"shape x element size overflows",
       RawFile(R"({"t":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,8]}})", d8),
       StatusCode::kShapeOverflow},
      {"shape and span disagree",
       RawFile(R"({"t":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}})", d8),
       StatusCode::kSizeMismatch},
      {"end before begin", RawFile(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", d8),
       StatusCode::kOffsetsInvalid},
      {"gap before first tensor",
       RawFile(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", d8),
       StatusCode::kOffsetsInvalid},
      {"overlapping tensors",
       RawFile(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
               R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
               std::string(12, '\0')),
       StatusCode::kOffsetsInvalid},
      {"tensor past data section", RawFile("{" + kT + "}", std::string(4, '\0')),
       StatusCode::kDataOutOfBounds},
      {"truncated inside data", valid.substr(0, valid.size() - 3), StatusCode::kDataOutOfBounds},
      {"trailing bytes after tensors", RawFile("{" + kT + "}", std::string(12, '\0')),
       StatusCode::kDataSizeMismatch},
      {"duplicate tensor name", RawFile("{" + kT + "," + kT + "}", d8), StatusCode::kDuplicateName},
      {"duplicate __metadata__", RawFile(R"({"__metadata__":{},"__metadata__":{}})", ""),
       StatusCode::kDuplicateName},
      {"metadata value not a string", RawFile(R"({"__metadata__":{"format":1}})", ""),
       StatusCode::kMetadataInvalid},
      {"metadata is an array", RawFile(R"({"__metadata__":["pt"]})", ""),
       StatusCode::kMetadataInvalid},
  };
}

TEST(SafeTensors, MalformedCorpusGivesSpecificErrors) {
  const auto corpus = MalformedCorpus();
  ASSERT_GE(corpus.size(), 20u);
  for (const auto& m : corpus) {
    auto r = ParseSafeTensors(Bytes(m.bytes), "case.safetensors");
    ASSERT_FALSE(r.ok()) << m.label;
    EXPECT_EQ(r.status().code(), m.expected) << m.label << " -> " << r.status().ToString();
    EXPECT_EQ(r.status().message().rfind("case.safetensors: ", 0), 0u) << r.status().message();
  }
}

TEST(SafeTensors, ErrorsNameTheTensor) {
  auto r = ParseSafeTensors(
      Bytes(RawFile(R"({"down.weight":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                    std::string(8, '\0'))),
      "m.safetensors");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("'down.weight'"), std::string::npos);
  EXPECT_NE(r.status().message().find("12 bytes"), std::string::npos);
}

TEST(SafeTensors, ValidEdgeCases) {
  // No tensors at all.
  auto empty = ParseSafeTensors(Bytes(RawFile("{}", "")), "x");
  ASSERT_TRUE(empty.ok()) << empty.status().ToString();
  EXPECT_TRUE(empty->tensors.empty());
  // Zero-element tensors, a scalar, space padding after the JSON, metadata, unsorted offsets.
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"z":{"dtype":"F16","shape":[0,3],"data_offsets":[4,4]},)"
      R"("s":{"dtype":"F32","shape":[],"data_offsets":[0,4]},)"
      R"("e":{"dtype":"BF16","shape":[0],"data_offsets":[4,4]}}    )";
  auto r = ParseSafeTensors(Bytes(RawFile(header, F32Bytes({2.5f}))), "x");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->tensors.size(), 3u);
  EXPECT_EQ(r->tensors[0].name, "s");
  EXPECT_EQ(r->tensors[0].num_elements(), 1u);
  EXPECT_EQ(r->metadata.at("format"), "pt");
  EXPECT_EQ(r->tensors[1].nbytes(), 0u);
}

TEST(SafeTensors, EveryDtypeSize) {
  for (const auto& t : AllDTypes()) {
    const size_t eb = t.bits / 8;
    const auto file =
        ValidFile({{"w", std::string(t.safetensors_name), {3, 5}, std::string(15 * eb, 'x')}});
    auto r = ParseSafeTensors(Bytes(file), "x");
    ASSERT_TRUE(r.ok()) << t.safetensors_name << ": " << r.status().ToString();
    EXPECT_EQ(r->tensors[0].dtype, t.dtype);
  }
}

TEST(SafeTensors, HeaderLimitIsConfigurable) {
  const auto file = ValidFile({{"w", "F32", {2}, F32Bytes({1, 2})}});
  ReaderLimits limits;
  limits.max_header_bytes = 10;
  EXPECT_EQ(ParseSafeTensors(Bytes(file), "x", limits).status().code(),
            StatusCode::kHeaderTooLarge);
  limits = {};
  limits.max_tensor_bytes = 4;
  EXPECT_EQ(ParseSafeTensors(Bytes(file), "x", limits).status().code(), StatusCode::kLimitExceeded);
  limits = {};
  limits.max_tensors = 0;
  EXPECT_EQ(ParseSafeTensors(Bytes(file), "x", limits).status().code(), StatusCode::kLimitExceeded);
}

TEST(SafeTensors, OpenMapsAndReadsBytes) {
  const auto dir = testing::TempDir("open");
  testing::WriteFile(dir / "m.safetensors", ValidFile({{"a", "F32", {2}, F32Bytes({1.5f, -2.0f})},
                                                       {"b", "F32", {1}, F32Bytes({7.0f})}},
                                                      R"({"k":"v"})"));
  auto f = SafeTensorsFile::Open((dir / "m.safetensors").string());
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const TensorInfo* b = (*f)->Find("b");
  ASSERT_NE(b, nullptr);
  float v;
  std::memcpy(&v, (*f)->Data(*b).data(), 4);
  EXPECT_EQ(v, 7.0f);
  EXPECT_EQ((*f)->metadata().at("k"), "v");
  EXPECT_EQ((*f)->Find("nope"), nullptr);

  auto missing = SafeTensorsFile::Open((dir / "nope.safetensors").string());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  auto folder = SafeTensorsFile::Open(dir.string());
  EXPECT_EQ(folder.status().code(), StatusCode::kIoError);
  testing::WriteFile(dir / "empty.safetensors", "");
  EXPECT_EQ(SafeTensorsFile::Open((dir / "empty.safetensors").string()).status().code(),
            StatusCode::kFileTooSmall);
  std::filesystem::remove_all(dir);
}

// Any corruption of a valid file is either still valid or a clean error; never a crash (this
// runs under ASan+UBSan in `make test`).
TEST(SafeTensors, MutatedFilesNeverCrash) {
  const bool ok = rc::check("byte flips and truncations",
                            [](std::vector<std::pair<uint16_t, uint8_t>> flips, uint16_t cut) {
                              std::string file =
                                  ValidFile({{"a.weight", "F32", {2, 3}, std::string(24, '\2')},
                                             {"b", "BF16", {4}, std::string(8, '\3')}},
                                            R"({"format":"pt"})");
                              for (const auto& [pos, val] : flips)
                                file[pos % file.size()] = static_cast<char>(val);
                              if (cut % 3 == 0) file.resize(cut % (file.size() + 1));
                              auto r = ParseSafeTensors(Bytes(file), "fuzz");
                              if (r.ok()) {
                                for (const auto& t : r->tensors)
                                  RC_ASSERT(r->data_offset() + t.end <= file.size());
                              } else {
                                RC_ASSERT(r.status().code() != StatusCode::kOk);
                              }
                            });
  EXPECT_TRUE(ok);
}

TEST(SafeTensors, RandomValidFilesRoundTrip) {
  const bool ok = rc::check("valid files parse to what was written", [] {
    const auto n = *rc::gen::inRange<size_t>(0, 8);
    std::vector<Entry> entries;
    for (size_t i = 0; i < n; ++i) {
      const auto dims = *rc::gen::container<std::vector<uint64_t>>(
          *rc::gen::inRange<size_t>(0, 4), rc::gen::inRange<uint64_t>(0, 5));
      uint64_t count = 1;
      for (auto d : dims) count *= d;
      const auto& dt = AllDTypes()[*rc::gen::inRange<size_t>(0, AllDTypes().size())];
      entries.push_back({"t" + std::to_string(i), std::string(dt.safetensors_name), dims,
                         std::string(count * dt.bits / 8, static_cast<char>(i))});
    }
    const auto file = ValidFile(entries);
    auto r = ParseSafeTensors(Bytes(file), "x");
    RC_ASSERT(r.ok());
    RC_ASSERT(r->tensors.size() == entries.size());
    for (const auto& t : r->tensors) {
      const auto& e = entries[std::stoul(t.name.substr(1))];
      RC_ASSERT(t.shape == e.shape);
      RC_ASSERT(t.nbytes() == e.bytes.size());
    }
  });
  EXPECT_TRUE(ok);
}

}  // namespace
}  // namespace arrowquant
