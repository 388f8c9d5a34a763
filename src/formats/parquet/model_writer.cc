// Streams tensors into the model file: one row group per (chunk of a) tensor, payload columns
// handed to Arrow without a copy.
#include <arrow/api.h>
#include <arrow/io/buffered.h>
#include <arrow/io/file.h>
#include <arrow/util/key_value_metadata.h>
#include <parquet/arrow/writer.h>
#include <parquet/properties.h>
#include <unistd.h>

#include <arrow/array/concatenate.h>
#include <chrono>
#include <cstdio>
#include <ctime>

#include <set>

#include <nlohmann/json.hpp>

#include "arrowquant/model_file.h"
#include "formats/parquet/model_row.h"
#include "formats/parquet/model_schema.h"

namespace arrowquant {

using pq::FromArrow;
namespace col = pq::col;

struct ModelWriter::Impl {
  std::string path, tmp;
  ModelMetadata meta;
  ModelWriterOptions opt;
  std::shared_ptr<arrow::io::OutputStream> sink;
  std::unique_ptr<parquet::arrow::FileWriter> writer;
  std::set<std::string> names;
  bool done = false;
  // Small rows wait here (their payload copied) and share one row group: every row group costs
  // ~3 KB of footer, which would dominate a model made of many biases and norms.
  std::vector<std::vector<std::shared_ptr<arrow::Array>>> pending;
  uint64_t pending_bytes = 0;
  Status FlushPending();
  // One row: its own row group when large, else batched with other small rows.
  Status Append(std::vector<std::shared_ptr<arrow::Array>> cols, uint64_t row_bytes,
                const std::string& where);
  Status WriteRowGroup(const std::vector<std::vector<std::shared_ptr<arrow::Array>>>& rows);
  uint64_t tensors = 0, params = 0, quantized_params = 0, payload_bytes = 0, source_bytes = 0;
};

namespace {

std::string NowIso8601() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::tm tm{};
  gmtime_r(&t, &tm);
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Shared row groups also close at this many payload bytes (kOwnRowGroupBytes, kSharedRowGroupRows:
// model_file.h).
constexpr uint64_t kPendingLimit = 4 << 20;

}  // namespace

ModelWriter::ModelWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ModelWriter::~ModelWriter() {
  Abort();
}

void ModelWriter::Abort() {
  if (!impl_ || impl_->done) return;
  impl_->done = true;
  if (impl_->writer) (void)impl_->writer->Close();
  if (impl_->sink) (void)impl_->sink->Close();
  std::remove(impl_->tmp.c_str());
}

Result<std::unique_ptr<ModelWriter>> ModelWriter::Open(const std::string& path,
                                                       ModelMetadata metadata,
                                                       const ModelWriterOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->tmp = path + ".tmp-" + std::to_string(::getpid());
  impl->meta = std::move(metadata);
  impl->opt = options;
  auto sink = arrow::io::FileOutputStream::Open(impl->tmp);
  if (!sink.ok()) return FromArrow(sink.status(), path + ": cannot create the output");
  // Parquet writes page by page (tens of KB); one write(2) per 8 MiB instead (measured on the
  // SD1.5-shaped job: ~31,000 calls down to ~80).
  auto buffered =
      arrow::io::BufferedOutputStream::Create(8 << 20, arrow::default_memory_pool(), *sink);
  if (!buffered.ok()) {
    (void)(*sink)->Close();
    std::remove(impl->tmp.c_str());
    return FromArrow(buffered.status(), path);
  }
  impl->sink = *buffered;
  parquet::WriterProperties::Builder b;
  // Payload compression was chosen by bench/compression.py: packed codes gain 3-9% from zstd,
  // f16 scales and zero-points 28-50%, coded scales nothing; codes stay uncompressed (load
  // speed). The light columns (names, shapes, format fields, activation parameters) are zstd'd
  // too: on a small model they are a tenth of the file (names repeat their prefixes), and on a
  // big one a few bytes a row group. No dictionary, and statistics only on layer_name (predicate
  // push-down): each costs footer bytes per column chunk.
  b.version(parquet::ParquetVersion::PARQUET_2_6)
      ->data_page_version(parquet::ParquetDataPageVersion::V2)
      ->disable_dictionary()
      ->disable_statistics()
      ->enable_statistics(col::kName)
      ->compression(arrow::Compression::ZSTD)
      ->compression(col::kData, arrow::Compression::UNCOMPRESSED);
  if (options.scratch) {
    b.compression(arrow::Compression::UNCOMPRESSED);
  } else {
    b.enable_page_checksum();
  }
  // No stored Arrow schema (ARROW:schema, ~9 KB of footer): the Parquet schema gives back every
  // type but large_binary, and readers take the payload as binary or large_binary alike.
  auto arrow_props = parquet::ArrowWriterProperties::Builder().build();
  auto w = parquet::arrow::FileWriter::Open(*pq::ModelSchema(), arrow::default_memory_pool(),
                                            impl->sink, b.build(), arrow_props);
  if (!w.ok()) {
    (void)impl->sink->Close();
    std::remove(impl->tmp.c_str());
    return FromArrow(w.status(), path);
  }
  impl->writer = std::move(*w);
  return std::unique_ptr<ModelWriter>(new ModelWriter(std::move(impl)));
}

Status ModelWriter::Write(const TensorRecord& r) {
  Impl& m = *impl_;
  if (m.done) return Status(StatusCode::kInvalidArgument, m.path + ": writer already closed");
  const std::string where = m.path + ": tensor '" + r.name + "'";
  if (!m.names.insert(r.name).second)
    return Status(StatusCode::kDuplicateName, where + " written twice");
  AQ_ASSIGN_OR_RETURN(pq::TensorRows rows, pq::SplitTensor(r, m.opt.max_chunk_bytes, where));
  for (const pq::RowChunk& ch : rows.chunks) {
    AQ_ASSIGN_OR_RETURN(auto cols, pq::BuildRow(r, rows.fields, ch, m.meta, where));
    AQ_RETURN_IF_ERROR(m.Append(std::move(cols), ch.bytes(), where));
    m.payload_bytes += ch.bytes();
  }
  ++m.tensors;
  m.params += rows.fields.params;
  if (r.quantized) m.quantized_params += rows.fields.params;
  m.source_bytes += rows.fields.source_bytes;
  return Status::OK();
}

Status ModelWriter::Impl::Append(std::vector<std::shared_ptr<arrow::Array>> cols,
                                 uint64_t row_bytes, const std::string& where) {
  if (row_bytes >= kOwnRowGroupBytes) {
    AQ_RETURN_IF_ERROR(FlushPending());
    return WriteRowGroup({cols});
  }
  // The caller's buffers may go away after Write(): copy the (small) payload.
  const auto schema = pq::ModelSchema();
  for (const char* c : pq::kPayloadColumnNames) {
    auto& a = cols[schema->GetFieldIndex(c)];
    std::shared_ptr<arrow::Array> copy;
    AQ_RETURN_IF_ERROR(FromArrow(arrow::Concatenate({a}).Value(&copy), where));
    a = copy;
  }
  pending.push_back(std::move(cols));
  pending_bytes += row_bytes;
  if (pending_bytes >= kPendingLimit || pending.size() >= kSharedRowGroupRows)
    return FlushPending();
  return Status::OK();
}

Status ModelWriter::Impl::WriteRowGroup(
    const std::vector<std::vector<std::shared_ptr<arrow::Array>>>& rows) {
  if (rows.empty()) return Status::OK();
  AQ_RETURN_IF_ERROR(FromArrow(writer->NewRowGroup(), path));
  for (size_t c = 0; c < rows[0].size(); ++c) {
    std::shared_ptr<arrow::Array> column = rows[0][c];
    if (rows.size() > 1) {
      arrow::ArrayVector parts;
      for (const auto& r : rows) parts.push_back(r[c]);
      AQ_RETURN_IF_ERROR(FromArrow(arrow::Concatenate(parts).Value(&column), path));
    }
    AQ_RETURN_IF_ERROR(FromArrow(writer->WriteColumnChunk(*column), path));
  }
  return Status::OK();
}

Status ModelWriter::Impl::FlushPending() {
  Status st = WriteRowGroup(pending);
  pending.clear();
  pending_bytes = 0;
  return st;
}

Status ModelWriter::Close() {
  Impl& m = *impl_;
  if (m.done) return Status(StatusCode::kInvalidArgument, m.path + ": writer already closed");
  if (Status st = m.FlushPending(); !st.ok()) {
    Abort();
    return st;
  }
  const std::string totals = nlohmann::json{
      {"tensors", m.tensors},
      {"parameters", m.params},
      {"quantized_parameters", m.quantized_params},
      {"payload_bytes", m.payload_bytes},
      {"source_bytes",
       m.source_bytes}}.dump();
  auto kv = arrow::KeyValueMetadata::Make(
      {pq::key::kFormat, pq::key::kVersion, pq::key::kTool, pq::key::kRecipe, pq::key::kSource,
       pq::key::kModality, pq::key::kDiffusion, pq::key::kCreated, pq::key::kTotals},
      {kModelFormatName, kModelFormatVersion, m.meta.tool_version, m.meta.recipe_json,
       m.meta.source_json, m.meta.modality, m.meta.is_diffusion_model ? "true" : "false",
       NowIso8601(), totals});
  for (const auto& [k, v] : m.meta.extra) kv->Append(k, v);
  // Only in the footer's key/values: pyarrow, Polars and DuckDB show them from there as the
  // schema's metadata, and a second copy in an embedded Arrow schema cost ~9 KB a file.
  Status st = FromArrow(m.writer->AddKeyValueMetadata(kv), m.path);
  if (st.ok()) st = FromArrow(m.writer->Close(), m.path);
  if (st.ok()) st = FromArrow(m.sink->Close(), m.path);
  if (st.ok() && std::rename(m.tmp.c_str(), m.path.c_str()) != 0) {
    st = Status(StatusCode::kIoError, m.path + ": cannot move the finished file into place");
  }
  if (!st.ok()) {
    Abort();
    return st;
  }
  m.done = true;
  return Status::OK();
}

}  // namespace arrowquant
