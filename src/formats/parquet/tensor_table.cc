#include "arrowquant/tensor_table.h"

#include <arrow/api.h>
#include <arrow/io/file.h>
#include <parquet/arrow/writer.h>
#include <parquet/properties.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>

namespace arrowquant {
namespace {

Status FromArrow(const arrow::Status& st, const std::string& path) {
  if (st.ok()) return Status::OK();
  return Status(StatusCode::kIoError, path + ": " + st.ToString());
}

std::shared_ptr<arrow::Schema> TensorTableSchema() {
  return arrow::schema({
      arrow::field("name", arrow::utf8(), false),
      arrow::field("component", arrow::utf8(), false),
      arrow::field("dtype", arrow::utf8(), false),
      arrow::field("shape", arrow::list(arrow::int64()), false),
      arrow::field("data", arrow::large_binary(), false),
  });
}

Status WriteRows(const Checkpoint& ck, const std::string& tmp) {
  auto sink_r = arrow::io::FileOutputStream::Open(tmp);
  if (!sink_r.ok()) return FromArrow(sink_r.status(), tmp);
  auto props = parquet::WriterProperties::Builder()
                   .version(parquet::ParquetVersion::PARQUET_2_6)
                   ->data_page_version(parquet::ParquetDataPageVersion::V2)
                   ->enable_page_checksum()
                   ->compression(arrow::Compression::UNCOMPRESSED)
                   ->build();
  // Storing the Arrow schema keeps large_binary (and future extension types) on read-back.
  auto arrow_props = parquet::ArrowWriterProperties::Builder().store_schema()->build();
  auto writer_r = parquet::arrow::FileWriter::Open(
      *TensorTableSchema(), arrow::default_memory_pool(), *sink_r, props, arrow_props);
  if (!writer_r.ok()) return FromArrow(writer_r.status(), tmp);
  auto writer = std::move(*writer_r);
  // One row group per tensor keeps memory bounded by the largest tensor, not the model.
  for (const auto& t : ck.tensors()) {
    arrow::StringBuilder name, component, dtype;
    arrow::ListBuilder shape(arrow::default_memory_pool(), std::make_shared<arrow::Int64Builder>());
    arrow::LargeBinaryBuilder data;
    auto* dims = static_cast<arrow::Int64Builder*>(shape.value_builder());
    arrow::Status st = name.Append(t.name);
    if (st.ok()) st = component.Append(t.component);
    if (st.ok()) st = dtype.Append(std::string(Traits(t.info->dtype).safetensors_name));
    if (st.ok()) st = shape.Append();
    for (uint64_t d : t.info->shape) {
      if (st.ok()) st = dims->Append(static_cast<int64_t>(d));
    }
    const auto bytes = t.data();
    if (st.ok())
      st = data.Append(reinterpret_cast<const uint8_t*>(bytes.data()),
                       static_cast<int64_t>(bytes.size()));
    AQ_RETURN_IF_ERROR(FromArrow(st, tmp));
    std::vector<std::shared_ptr<arrow::Array>> cols(5);
    AQ_RETURN_IF_ERROR(FromArrow(name.Finish(&cols[0]), tmp));
    AQ_RETURN_IF_ERROR(FromArrow(component.Finish(&cols[1]), tmp));
    AQ_RETURN_IF_ERROR(FromArrow(dtype.Finish(&cols[2]), tmp));
    AQ_RETURN_IF_ERROR(FromArrow(shape.Finish(&cols[3]), tmp));
    AQ_RETURN_IF_ERROR(FromArrow(data.Finish(&cols[4]), tmp));
    AQ_RETURN_IF_ERROR(FromArrow(writer->NewRowGroup(), tmp));
    for (const auto& col : cols) AQ_RETURN_IF_ERROR(FromArrow(writer->WriteColumnChunk(*col), tmp));
  }
  AQ_RETURN_IF_ERROR(FromArrow(writer->Close(), tmp));
  return FromArrow((*sink_r)->Close(), tmp);
}

}  // namespace

Status WriteTensorTable(const Checkpoint& checkpoint, const std::string& out_path) {
  const std::string tmp = out_path + ".tmp-" + std::to_string(::getpid());
  Status st = WriteRows(checkpoint, tmp);
  if (st.ok() && std::rename(tmp.c_str(), out_path.c_str()) != 0) {
    st = Status(StatusCode::kIoError, out_path + ": cannot rename the finished file into place");
  }
  if (!st.ok()) std::remove(tmp.c_str());
  return st;
}

}  // namespace arrowquant
