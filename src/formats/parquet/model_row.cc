#include "formats/parquet/model_row.h"

#include <algorithm>
#include <optional>

#include "formats/parquet/model_schema.h"

namespace arrowquant::pq {

const char* const kPayloadColumnNames[kPayloadColumns] = {col::kData, col::kScales, col::kZeros,
                                                          col::kSuper};

namespace {

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

Result<TensorRows> SplitQuantized(const QuantizedTensor& q, uint64_t max_chunk_bytes) {
  AQ_RETURN_IF_ERROR(q.Validate());
  TensorRows out;
  TensorFields& f = out.fields;
  f.shape = q.shape;
  f.source_dtype = std::string(Traits(q.source_dtype).safetensors_name);
  f.quant_type = "int" + std::to_string(q.spec.bits);
  f.bits = q.spec.bits;
  f.group = q.spec.group_size;
  f.axis = 1;
  f.scheme = SchemeName(q.spec.scheme);
  f.method = GridName(q.spec.grid);
  f.scale_dtype = ScaleDTypeName(q.spec);
  f.source_bytes = q.num_elements() * ElementBytes(q.source_dtype);
  // Chunks fall on whole rows, so each one decodes by itself.
  const uint64_t per_row = std::max<uint64_t>(1, q.bytes_per_row());
  const uint64_t rows_per_chunk = std::max<uint64_t>(1, max_chunk_bytes / per_row);
  const uint64_t n = std::max<uint64_t>(1, (q.rows + rows_per_chunk - 1) / rows_per_chunk);
  const std::vector<uint8_t>* bufs[kPayloadColumns] = {&q.codes, &q.scales, &q.zeros,
                                                       &q.super_scales};
  for (uint64_t c = 0; c < n; ++c) {
    const uint64_t r0 = c * rows_per_chunk, r1 = std::min(q.rows, r0 + rows_per_chunk);
    RowChunk ch{static_cast<int>(c), static_cast<int>(n), {}, {}};
    for (int k = 0; k < kPayloadColumns; ++k) {
      const uint64_t row_bytes = q.rows ? bufs[k]->size() / q.rows : 0;
      ch.payload[k] = bufs[k]->data() + r0 * row_bytes;
      ch.sizes[k] = static_cast<int64_t>((r1 - r0) * row_bytes);
    }
    out.chunks.push_back(ch);
  }
  return out;
}

Result<TensorRows> SplitRaw(const TensorRecord& r, uint64_t max_chunk_bytes,
                            const std::string& where) {
  TensorRows out;
  TensorFields& f = out.fields;
  f.shape = r.raw_shape;
  f.source_dtype = std::string(Traits(r.raw_dtype).safetensors_name);
  f.quant_type = "raw";
  f.source_bytes = r.raw.size();
  const uint64_t esize = ElementBytes(r.raw_dtype);
  uint64_t need = esize;
  for (uint64_t d : f.shape) need *= d;
  if (need != r.raw.size()) {
    return Status(StatusCode::kSizeMismatch, where + ": shape needs " + std::to_string(need) +
                                                 " bytes, got " + std::to_string(r.raw.size()));
  }
  // Chunks fall on element boundaries.
  const uint64_t step = std::max<uint64_t>(esize, max_chunk_bytes / esize * esize);
  const uint64_t n = std::max<uint64_t>(1, (r.raw.size() + step - 1) / step);
  for (uint64_t c = 0; c < n; ++c) {
    const uint64_t b0 = c * step, b1 = std::min<uint64_t>(r.raw.size(), b0 + step);
    RowChunk ch{static_cast<int>(c), static_cast<int>(n), {}, {}};
    ch.payload[0] = reinterpret_cast<const uint8_t*>(r.raw.data()) + b0;
    ch.sizes[0] = static_cast<int64_t>(b1 - b0);
    out.chunks.push_back(ch);
  }
  return out;
}

}  // namespace

Result<TensorRows> SplitTensor(const TensorRecord& r, uint64_t max_chunk_bytes,
                               const std::string& where) {
  Result<TensorRows> rows = r.quantized ? SplitQuantized(*r.quantized, max_chunk_bytes)
                                        : SplitRaw(r, max_chunk_bytes, where);
  if (rows.ok()) {
    rows->fields.params = 1;
    for (uint64_t d : rows->fields.shape) rows->fields.params *= d;
  }
  return rows;
}

Result<std::vector<std::shared_ptr<arrow::Array>>> BuildRow(const TensorRecord& r,
                                                            const TensorFields& f,
                                                            const RowChunk& chunk,
                                                            const ModelMetadata& meta,
                                                            const std::string& where) {
  const auto schema = ModelSchema();
  std::unique_ptr<arrow::RecordBatchBuilder> rb;
  AQ_RETURN_IF_ERROR(FromArrow(
      arrow::RecordBatchBuilder::Make(schema, arrow::default_memory_pool()).Value(&rb), where));
  auto field = [&](const char* name) { return rb->GetField(schema->GetFieldIndex(name)); };
  auto str = [&](const char* c, const std::string& v) {
    return static_cast<arrow::StringBuilder*>(field(c))->Append(v);
  };
  auto i32 = [&](const char* c, int32_t v) {
    return static_cast<arrow::Int32Builder*>(field(c))->Append(v);
  };
  auto dbl = [&](const char* c, std::optional<double> v) {
    auto* b = static_cast<arrow::DoubleBuilder*>(field(c));
    return v ? b->Append(*v) : b->AppendNull();
  };
  arrow::Status st = str(col::kName, r.name);
  st &= str(col::kComponent, r.component);
  st &= i32(col::kChunk, chunk.index);
  st &= i32(col::kNumChunks, chunk.count);
  {
    auto* lb = static_cast<arrow::ListBuilder*>(field(col::kShape));
    st &= lb->Append();
    for (uint64_t d : f.shape) {
      st &= static_cast<arrow::Int64Builder*>(lb->value_builder())->Append(static_cast<int64_t>(d));
    }
  }
  st &= str(col::kDType, f.source_dtype);
  st &= str(col::kQuantType, f.quant_type);
  st &= static_cast<arrow::Int8Builder*>(field(col::kBits))->Append(static_cast<int8_t>(f.bits));
  st &= str(col::kScheme, f.scheme);
  st &= str(col::kMethod, f.method);
  st &= str(col::kScaleDType, f.scale_dtype);
  st &= i32(col::kGroupSize, f.group);
  st &= i32(col::kAxis, f.axis);
  // Payload columns are replaced below by borrowed arrays; keep the builders empty-but-valid.
  for (const char* c : kPayloadColumnNames) {
    st &= static_cast<arrow::LargeBinaryBuilder*>(field(c))->AppendEmptyValue();
  }
  st &= static_cast<arrow::Int64Builder*>(field(col::kNumParams))
            ->Append(static_cast<int64_t>(f.params));
  const auto& mt = r.metrics;
  st &= dbl(col::kCosine, mt ? std::optional<double>(mt->cosine) : std::nullopt);
  st &= dbl(col::kSqnr, mt ? std::optional<double>(mt->sqnr_db) : std::nullopt);
  st &= dbl(col::kRelRmse, mt ? std::optional<double>(mt->rel_rmse) : std::nullopt);
  st &= static_cast<arrow::BooleanBuilder*>(field(col::kIsDiffusion))
            ->Append(meta.is_diffusion_model);
  st &= str(col::kModality, meta.modality);
  const auto& ta = r.time_aware;
  {
    auto* b = static_cast<arrow::Int32Builder*>(field(col::kTimeGroups));
    st &= ta ? b->Append(ta->num_groups) : b->AppendNull();
    auto* ab = static_cast<arrow::Int8Builder*>(field(col::kActBits));
    st &= ta ? ab->Append(static_cast<int8_t>(ta->act_bits)) : ab->AppendNull();
  }
  const bool has_ta = ta.has_value(), has_sp = r.spatial.has_value();
  st &= AppendList<arrow::Int32Builder>(
      field(col::kTimeBounds), Opt(has_ta, ta ? ta->group_bounds : std::vector<int32_t>{}));
  st &= AppendList<arrow::FloatBuilder>(field(col::kActScales),
                                        Opt(has_ta, ta ? ta->act_scales : std::vector<float>{}));
  st &= AppendList<arrow::Int32Builder>(
      field(col::kActZeros), Opt(has_ta, ta ? ta->act_zero_points : std::vector<int32_t>{}));
  const auto& sp = r.spatial;
  st &= AppendList<arrow::FloatBuilder>(
      field(col::kEqScales), Opt(has_sp, sp ? sp->equalization_scales : std::vector<float>{}));
  {
    auto* b = static_cast<arrow::FloatBuilder*>(field(col::kSmoothAlpha));
    st &= sp ? b->Append(sp->smoothing_alpha) : b->AppendNull();
  }
  const auto& as = r.activation_stats;
  const bool has_as = as.has_value();
  st &= AppendList<arrow::FloatBuilder>(field(col::kActMin),
                                        Opt(has_as, as ? as->min : std::vector<float>{}));
  st &= AppendList<arrow::FloatBuilder>(field(col::kActMax),
                                        Opt(has_as, as ? as->max : std::vector<float>{}));
  st &= AppendList<arrow::FloatBuilder>(field(col::kActAbsMax),
                                        Opt(has_as, as ? as->absmax : std::vector<float>{}));
  AQ_RETURN_IF_ERROR(FromArrow(st, where));
  std::shared_ptr<arrow::RecordBatch> batch;
  AQ_RETURN_IF_ERROR(FromArrow(rb->Flush().Value(&batch), where));
  std::vector<std::shared_ptr<arrow::Array>> cols = batch->columns();
  for (int k = 0; k < kPayloadColumns; ++k) {
    cols[schema->GetFieldIndex(kPayloadColumnNames[k])] =
        BorrowedBinary(chunk.payload[k], chunk.sizes[k]);
  }
  return cols;
}

}  // namespace arrowquant::pq
