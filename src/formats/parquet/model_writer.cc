// Streams tensors into the model file: one row group per (chunk of a) tensor, payload columns
// handed to Arrow without a copy.
#include <arrow/api.h>
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
#include "formats/parquet/model_schema.h"

namespace arrowquant {

using pq::FromArrow;
namespace col = pq::col;

struct ModelWriter::Impl {
  std::string path, tmp;
  ModelMetadata meta;
  ModelWriterOptions opt;
  std::shared_ptr<arrow::io::FileOutputStream> sink;
  std::unique_ptr<parquet::arrow::FileWriter> writer;
  std::set<std::string> names;
  bool done = false;
  // Small rows wait here (their payload copied) and share one row group: every row group costs
  // ~3 KB of footer, which would dominate a model made of many biases and norms.
  std::vector<std::vector<std::shared_ptr<arrow::Array>>> pending;
  uint64_t pending_bytes = 0;
  Status FlushPending();
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

// A one-value large_binary array over borrowed bytes (no copy; `bytes` outlives the write).
std::shared_ptr<arrow::Array> BorrowedBinary(const uint8_t* data, int64_t size) {
  static const uint8_t kEmpty = 0;
  if (size == 0 || data == nullptr) data = &kEmpty;
  // Buffer::FromVector owns its two offsets without a fallible allocation call.
  auto offsets = arrow::Buffer::FromVector(std::vector<int64_t>{0, size});
  auto values = std::make_shared<arrow::Buffer>(data, size);
  return std::make_shared<arrow::LargeBinaryArray>(1, std::move(offsets), values);
}

template <typename B, typename V>
arrow::Status AppendList(arrow::ArrayBuilder* b, const std::optional<std::vector<V>>& v) {
  auto* lb = static_cast<arrow::ListBuilder*>(b);
  if (!v) return lb->AppendNull();
  ARROW_RETURN_NOT_OK(lb->Append());
  auto* vb = static_cast<B*>(lb->value_builder());
  return vb->AppendValues(v->data(), static_cast<int64_t>(v->size()));
}

template <typename T>
std::optional<T> Opt(bool has, const T& v) {
  return has ? std::optional<T>(v) : std::nullopt;
}

constexpr uint64_t kSmallRowBytes = 256 << 10;  // rows below this share row groups
constexpr uint64_t kPendingLimit = 4 << 20;     // ... up to this many payload bytes
constexpr size_t kPendingRows = 256;            // ... or rows

struct Chunk {
  int index, count;
  const uint8_t* payload[4];
  int64_t sizes[4];
};

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
  impl->sink = *sink;
  parquet::WriterProperties::Builder b;
  // Every column chunk costs page headers and footer entries once per tensor, so the light
  // columns go without dictionary, compression or statistics (layer_name keeps statistics for
  // predicate push-down). Payload compression was chosen by bench/compression.py: packed codes
  // gain 3-9% from zstd, f16 scales and zero-points 28-50%, coded scales nothing; codes stay
  // uncompressed (load speed), the small scale columns use zstd.
  b.version(parquet::ParquetVersion::PARQUET_2_6)
      ->data_page_version(parquet::ParquetDataPageVersion::V2)
      ->enable_page_checksum()
      ->disable_dictionary()
      ->disable_statistics()
      ->enable_statistics(col::kName)
      ->compression(arrow::Compression::UNCOMPRESSED);
  for (const auto& name : {col::kScales, col::kZeros, col::kSuper}) {
    b.compression(name, arrow::Compression::ZSTD);
  }
  auto arrow_props = parquet::ArrowWriterProperties::Builder().store_schema()->build();
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

  const QuantizedTensor* q = r.quantized;
  std::vector<uint64_t> shape;
  std::string source_dtype, quant_type, scheme, method, scale_dtype;
  int bits = 0, group = 0, axis = -1;
  uint64_t params = 1;
  std::vector<Chunk> chunks;
  if (q) {
    AQ_RETURN_IF_ERROR(q->Validate());
    shape = q->shape;
    source_dtype = std::string(Traits(q->source_dtype).safetensors_name);
    quant_type = "int" + std::to_string(q->spec.bits);
    bits = q->spec.bits;
    group = q->spec.group_size;
    axis = 1;
    scheme = SchemeName(q->spec.scheme);
    method = GridName(q->spec.grid);
    scale_dtype = ScaleDTypeName(q->spec);
    const uint64_t per_row = std::max<uint64_t>(1, q->bytes_per_row());
    const uint64_t rows_per_chunk = std::max<uint64_t>(1, m.opt.max_chunk_bytes / per_row);
    const uint64_t n = std::max<uint64_t>(1, (q->rows + rows_per_chunk - 1) / rows_per_chunk);
    const std::vector<uint8_t>* bufs[4] = {&q->codes, &q->scales, &q->zeros, &q->super_scales};
    for (uint64_t c = 0; c < n; ++c) {
      const uint64_t r0 = c * rows_per_chunk, r1 = std::min(q->rows, r0 + rows_per_chunk);
      Chunk ch{static_cast<int>(c), static_cast<int>(n), {}, {}};
      for (int k = 0; k < 4; ++k) {
        const uint64_t row_bytes = q->rows ? bufs[k]->size() / q->rows : 0;
        ch.payload[k] = bufs[k]->data() + r0 * row_bytes;
        ch.sizes[k] = static_cast<int64_t>((r1 - r0) * row_bytes);
      }
      chunks.push_back(ch);
    }
    m.quantized_params += q->num_elements();
    m.source_bytes += q->num_elements() * ElementBytes(q->source_dtype);
  } else {
    shape = r.raw_shape;
    source_dtype = std::string(Traits(r.raw_dtype).safetensors_name);
    quant_type = "raw";
    uint64_t need = ElementBytes(r.raw_dtype);
    for (uint64_t d : shape) need *= d;
    if (need != r.raw.size()) {
      return Status(StatusCode::kSizeMismatch, where + ": shape needs " + std::to_string(need) +
                                                   " bytes, got " + std::to_string(r.raw.size()));
    }
    const uint64_t esize = ElementBytes(r.raw_dtype);
    const uint64_t step = std::max<uint64_t>(esize, m.opt.max_chunk_bytes / esize * esize);
    const uint64_t n = std::max<uint64_t>(1, (r.raw.size() + step - 1) / step);
    for (uint64_t c = 0; c < n; ++c) {
      const uint64_t b0 = c * step, b1 = std::min<uint64_t>(r.raw.size(), b0 + step);
      static const uint8_t kEmpty = 0;
      Chunk ch{static_cast<int>(c),
               static_cast<int>(n),
               {reinterpret_cast<const uint8_t*>(r.raw.data()) + b0, &kEmpty, &kEmpty, &kEmpty},
               {static_cast<int64_t>(b1 - b0), 0, 0, 0}};
      if (r.raw.empty()) ch.payload[0] = &kEmpty;
      chunks.push_back(ch);
    }
    m.source_bytes += r.raw.size();
  }
  for (uint64_t d : shape) params *= d;

  const auto schema = pq::ModelSchema();
  for (const Chunk& ch : chunks) {
    std::unique_ptr<arrow::RecordBatchBuilder> rb;
    AQ_RETURN_IF_ERROR(FromArrow(
        arrow::RecordBatchBuilder::Make(schema, arrow::default_memory_pool()).Value(&rb), where));
    auto field = [&](const char* name) { return rb->GetField(schema->GetFieldIndex(name)); };
    auto str = [&](const char* c, const std::string& v) {
      return static_cast<arrow::StringBuilder*>(field(c))->Append(v);
    };
    arrow::Status st = str(col::kName, r.name);
    st &= str(col::kComponent, r.component);
    st &= static_cast<arrow::Int32Builder*>(field(col::kChunk))->Append(ch.index);
    st &= static_cast<arrow::Int32Builder*>(field(col::kNumChunks))->Append(ch.count);
    {
      auto* lb = static_cast<arrow::ListBuilder*>(field(col::kShape));
      st &= lb->Append();
      for (uint64_t d : shape)
        st &=
            static_cast<arrow::Int64Builder*>(lb->value_builder())->Append(static_cast<int64_t>(d));
    }
    st &= str(col::kDType, source_dtype);
    st &= str(col::kQuantType, quant_type);
    st &= static_cast<arrow::Int8Builder*>(field(col::kBits))->Append(static_cast<int8_t>(bits));
    st &= str(col::kScheme, scheme);
    st &= str(col::kMethod, method);
    st &= str(col::kScaleDType, scale_dtype);
    st &= static_cast<arrow::Int32Builder*>(field(col::kGroupSize))->Append(group);
    st &= static_cast<arrow::Int32Builder*>(field(col::kAxis))->Append(axis);
    // Payload columns are attached below as borrowed arrays; keep builders empty-but-valid.
    for (const char* c : {col::kData, col::kScales, col::kZeros, col::kSuper}) {
      st &= static_cast<arrow::LargeBinaryBuilder*>(field(c))->AppendEmptyValue();
    }
    st &= static_cast<arrow::Int64Builder*>(field(col::kNumParams))
              ->Append(static_cast<int64_t>(params));
    auto dbl = [&](const char* c, std::optional<double> v) {
      auto* b = static_cast<arrow::DoubleBuilder*>(field(c));
      return v ? b->Append(*v) : b->AppendNull();
    };
    st &= dbl(col::kCosine, r.metrics ? std::optional<double>(r.metrics->cosine) : std::nullopt);
    st &= dbl(col::kSqnr, r.metrics ? std::optional<double>(r.metrics->sqnr_db) : std::nullopt);
    st &= dbl(col::kRelRmse, r.metrics ? std::optional<double>(r.metrics->rel_rmse) : std::nullopt);
    st &= static_cast<arrow::BooleanBuilder*>(field(col::kIsDiffusion))
              ->Append(m.meta.is_diffusion_model);
    st &= str(col::kModality, m.meta.modality);
    const auto& ta = r.time_aware;
    {
      auto* b = static_cast<arrow::Int32Builder*>(field(col::kTimeGroups));
      st &= ta ? b->Append(ta->num_groups) : b->AppendNull();
      auto* ab = static_cast<arrow::Int8Builder*>(field(col::kActBits));
      st &= ta ? ab->Append(static_cast<int8_t>(ta->act_bits)) : ab->AppendNull();
    }
    st &= AppendList<arrow::Int32Builder>(
        field(col::kTimeBounds),
        Opt(ta.has_value(), ta ? ta->group_bounds : std::vector<int32_t>{}));
    st &= AppendList<arrow::FloatBuilder>(
        field(col::kActScales), Opt(ta.has_value(), ta ? ta->act_scales : std::vector<float>{}));
    st &= AppendList<arrow::Int32Builder>(
        field(col::kActZeros),
        Opt(ta.has_value(), ta ? ta->act_zero_points : std::vector<int32_t>{}));
    const auto& sp = r.spatial;
    st &= AppendList<arrow::FloatBuilder>(
        field(col::kEqScales),
        Opt(sp.has_value(), sp ? sp->equalization_scales : std::vector<float>{}));
    {
      auto* b = static_cast<arrow::FloatBuilder*>(field(col::kSmoothAlpha));
      st &= sp ? b->Append(sp->smoothing_alpha) : b->AppendNull();
    }
    const auto& as = r.activation_stats;
    st &= AppendList<arrow::FloatBuilder>(field(col::kActMin),
                                          Opt(as.has_value(), as ? as->min : std::vector<float>{}));
    st &= AppendList<arrow::FloatBuilder>(field(col::kActMax),
                                          Opt(as.has_value(), as ? as->max : std::vector<float>{}));
    st &= AppendList<arrow::FloatBuilder>(
        field(col::kActAbsMax), Opt(as.has_value(), as ? as->absmax : std::vector<float>{}));
    AQ_RETURN_IF_ERROR(FromArrow(st, where));
    std::shared_ptr<arrow::RecordBatch> batch;
    AQ_RETURN_IF_ERROR(FromArrow(rb->Flush().Value(&batch), where));
    std::vector<std::shared_ptr<arrow::Array>> cols = batch->columns();
    const char* payload_cols[4] = {col::kData, col::kScales, col::kZeros, col::kSuper};
    for (int k = 0; k < 4; ++k) {
      cols[schema->GetFieldIndex(payload_cols[k])] = BorrowedBinary(ch.payload[k], ch.sizes[k]);
      m.payload_bytes += static_cast<uint64_t>(ch.sizes[k]);
    }
    const uint64_t row_bytes =
        static_cast<uint64_t>(ch.sizes[0] + ch.sizes[1] + ch.sizes[2] + ch.sizes[3]);
    if (row_bytes >= kSmallRowBytes) {
      AQ_RETURN_IF_ERROR(m.FlushPending());
      AQ_RETURN_IF_ERROR(m.WriteRowGroup({cols}));
      continue;
    }
    // The caller's buffers may go away after Write(): copy the (small) payload.
    for (const char* c : payload_cols) {
      auto& a = cols[schema->GetFieldIndex(c)];
      std::shared_ptr<arrow::Array> copy;
      AQ_RETURN_IF_ERROR(FromArrow(arrow::Concatenate({a}).Value(&copy), where));
      a = copy;
    }
    m.pending.push_back(std::move(cols));
    m.pending_bytes += row_bytes;
    if (m.pending_bytes >= kPendingLimit || m.pending.size() >= kPendingRows) {
      AQ_RETURN_IF_ERROR(m.FlushPending());
    }
  }
  ++m.tensors;
  m.params += params;
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
  // The same key/values in the embedded Arrow schema, where pyarrow, Polars and DuckDB users
  // look (read_table(...).schema.metadata); it replaces the schema stored at Open().
  std::string arrow_schema;
  if (Status st = pq::SerializedArrowSchema(*pq::ModelSchema()->WithMetadata(kv), &arrow_schema);
      !st.ok()) {
    Abort();
    return Status(st.code(), m.path + ": " + st.message());
  }
  kv->Append(pq::key::kArrowSchema, arrow_schema);
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
