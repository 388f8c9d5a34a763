// Arrow ABI check on the C++ side: our Parquet file is read back by Arrow's own reader.
#include <arrow/api.h>
#include <arrow/io/file.h>
#include <gtest/gtest.h>
#include <parquet/arrow/reader.h>
#include <parquet/file_reader.h>

#include <filesystem>

#include "arrowquant/tensor_table.h"
#include "safetensors_builder.h"

namespace arrowquant {
namespace {

TEST(TensorTable, WritesParquetV2ThatArrowReads) {
  const auto dir = testing::TempDir("table");
  testing::WriteFile(dir / "m.safetensors",
                     testing::ValidFile({{"a", "F32", {2, 2}, std::string(16, '\7')},
                                         {"b", "BF16", {3}, "abcdef"},
                                         {"z", "F16", {0}, ""}}));
  auto ck = Checkpoint::Open((dir / "m.safetensors").string());
  ASSERT_TRUE(ck.ok());
  const auto out = (dir / "m.parquet").string();
  ASSERT_TRUE(WriteTensorTable(**ck, out).ok());
  ASSERT_FALSE(std::filesystem::exists(out + ".tmp-" + std::to_string(::getpid())));

  auto file = arrow::io::ReadableFile::Open(out).ValueOrDie();
  auto pq = parquet::ParquetFileReader::Open(file);
  EXPECT_EQ(pq->metadata()->version(), parquet::ParquetVersion::PARQUET_2_6);
  EXPECT_EQ(pq->metadata()->num_rows(), 3);
  auto reader = parquet::arrow::OpenFile(arrow::io::ReadableFile::Open(out).ValueOrDie(),
                                         arrow::default_memory_pool())
                    .ValueOrDie();
  auto table = reader->ReadTable().ValueOrDie()->CombineChunks().ValueOrDie();
  auto data =
      std::static_pointer_cast<arrow::LargeBinaryArray>(table->GetColumnByName("data")->chunk(0));
  ASSERT_EQ(data->length(), 3);
  EXPECT_EQ(data->GetString(0), std::string(16, '\7'));
  EXPECT_EQ(data->GetString(1), "abcdef");
  EXPECT_EQ(data->GetString(2), "");

  EXPECT_FALSE(WriteTensorTable(**ck, (dir / "no" / "such" / "dir.parquet").string()).ok());
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace arrowquant
