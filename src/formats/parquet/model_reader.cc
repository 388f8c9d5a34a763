// Reads model files: ArrowQuant's own schema, and the seed project's base V2 schema (legacy).
#include <arrow/api.h>
#include <arrow/io/file.h>
#include <arrow/util/key_value_metadata.h>
#include <arrow/util/thread_pool.h>
#include <parquet/arrow/reader.h>
#include <parquet/column_reader.h>
#include <parquet/file_reader.h>
#include <parquet/properties.h>

#include <cstring>
#include <mutex>
#include <map>

#include "arrowquant/model_file.h"
#include "formats/parquet/model_schema.h"
#include "pipeline/parallel.h"

namespace arrowquant {

using pq::FromArrow;
namespace col = pq::col;

struct ModelReader::Impl {
  std::string path;
  bool legacy = false;
  std::unique_ptr<parquet::arrow::FileReader> reader;  // used by Open()
  // Tensors are read from several threads; Parquet readers are not shared between threads, so
  // each read borrows one from this pool (all over the same memory map and parsed footer).
  std::shared_ptr<arrow::io::RandomAccessFile> file;
  parquet::ReaderProperties props = parquet::default_reader_properties();
  std::shared_ptr<parquet::FileMetaData> footer;
  mutable std::mutex pool_mu;
  mutable std::vector<std::unique_ptr<parquet::arrow::FileReader>> idle;
  Result<std::unique_ptr<parquet::arrow::FileReader>> Borrow() const;
  void Return(std::unique_ptr<parquet::arrow::FileReader> r) const;
  std::map<std::string, std::string> metadata;
  std::vector<ModelTensorInfo> tensors;
  std::map<std::string, size_t> by_name;
  std::map<std::string, int> columns;  // name -> column index
  // Legacy rows: per-group scales and zero-points (float lists).
  std::map<std::string, std::pair<std::vector<float>, std::vector<float>>> legacy_params;

  Status Err(StatusCode code, const std::string& msg) const { return Status(code, path + ": " + msg); }
  Result<std::shared_ptr<arrow::Array>> ReadCell(int rg, const char* column) const;
  // Appends the tensor's bytes of `column` (all its rows) to `out`.
  Status ReadPayload(const ModelTensorInfo& t, const char* column, std::vector<uint8_t>& out) const;
  // Fills q (reusing its buffers' capacity) with a packed tensor.
  Status ReadQuantizedInto(const ModelTensorInfo& t, QuantizedTensor& q) const;
};

namespace {

Result<int64_t> Int(const std::shared_ptr<arrow::Array>& a, int64_t i) {
  if (!a) return Status(StatusCode::kFormatInvalid, "missing integer column");
  switch (a->type_id()) {
    case arrow::Type::INT8: return static_cast<const arrow::Int8Array&>(*a).Value(i);
    case arrow::Type::INT16: return static_cast<const arrow::Int16Array&>(*a).Value(i);
    case arrow::Type::INT32: return static_cast<const arrow::Int32Array&>(*a).Value(i);
    case arrow::Type::INT64: return static_cast<const arrow::Int64Array&>(*a).Value(i);
    case arrow::Type::UINT8: return static_cast<const arrow::UInt8Array&>(*a).Value(i);
    case arrow::Type::UINT32: return static_cast<const arrow::UInt32Array&>(*a).Value(i);
    case arrow::Type::UINT64: return static_cast<int64_t>(static_cast<const arrow::UInt64Array&>(*a).Value(i));
    default: return Status(StatusCode::kFormatInvalid, "expected an integer column, found " + a->type()->ToString());
  }
}

Result<std::string> Str(const std::shared_ptr<arrow::Array>& a, int64_t i) {
  if (!a) return Status(StatusCode::kFormatInvalid, "missing string column");
  if (a->type_id() == arrow::Type::STRING) return static_cast<const arrow::StringArray&>(*a).GetString(i);
  if (a->type_id() == arrow::Type::LARGE_STRING) return static_cast<const arrow::LargeStringArray&>(*a).GetString(i);
  return Status(StatusCode::kFormatInvalid, "expected a string column, found " + a->type()->ToString());
}

template <typename T>
Result<std::optional<std::vector<T>>> NumList(const std::shared_ptr<arrow::Array>& a, int64_t i) {
  if (!a) return Status(StatusCode::kFormatInvalid, "missing list column");
  if (a->IsNull(i)) return std::optional<std::vector<T>>();
  if (a->type_id() != arrow::Type::LIST) {
    return Status(StatusCode::kFormatInvalid, "expected a list column, found " + a->type()->ToString());
  }
  const auto& l = static_cast<const arrow::ListArray&>(*a);
  const auto values = l.value_slice(i);
  std::vector<T> out;
  out.reserve(values->length());
  for (int64_t k = 0; k < values->length(); ++k) {
    switch (values->type_id()) {
      case arrow::Type::FLOAT: out.push_back(static_cast<T>(static_cast<const arrow::FloatArray&>(*values).Value(k))); break;
      case arrow::Type::DOUBLE: out.push_back(static_cast<T>(static_cast<const arrow::DoubleArray&>(*values).Value(k))); break;
      default: {
        AQ_ASSIGN_OR_RETURN(int64_t v, Int(values, k));
        out.push_back(static_cast<T>(v));
      }
    }
  }
  return std::optional<std::vector<T>>(std::move(out));
}

Result<QuantSpec> SpecFrom(int bits, int group, const std::string& scheme, const std::string& method,
                           const std::string& scales) {
  QuantSpec s{bits, group};
  if (scheme == "asym") s.scheme = Scheme::kAsymmetric;
  else if (scheme == "sym") s.scheme = Scheme::kSymmetric;
  else return Status(StatusCode::kFormatInvalid, "unknown scheme '" + scheme + "'");
  if (method == "search") s.grid = Grid::kSearch;
  else if (method == "minmax") s.grid = Grid::kMinMax;
  else return Status(StatusCode::kFormatInvalid, "unknown method '" + method + "'");
  if (scales == "f16") s.scales = ScaleStorage::kF16;
  else if (scales == "f32") s.scales = ScaleStorage::kF32;
  else if (scales.size() == 2 && scales[0] == 'q') {
    s.scales = ScaleStorage::kCoded;
    s.scale_bits = scales[1] - '0';
  } else {
    return Status(StatusCode::kFormatInvalid, "unknown scale_dtype '" + scales + "'");
  }
  AQ_RETURN_IF_ERROR(s.Validate());
  return s;
}

// The seed schema's dtype strings.
std::optional<DType> LegacyDType(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(c));
  if (s == "float32" || s == "f32" || s == "fp32") return DType::kF32;
  if (s == "float16" || s == "f16" || s == "fp16") return DType::kF16;
  if (s == "bfloat16" || s == "bf16") return DType::kBF16;
  return std::nullopt;
}

}  // namespace

Result<std::unique_ptr<parquet::arrow::FileReader>> ModelReader::Impl::Borrow() const {
  {
    std::lock_guard lk(pool_mu);
    if (!idle.empty()) {
      auto r = std::move(idle.back());
      idle.pop_back();
      return r;
    }
  }
  parquet::arrow::FileReaderBuilder builder;
  AQ_RETURN_IF_ERROR(FromArrow(builder.Open(file, props, footer), path, StatusCode::kFormatInvalid));
  parquet::ArrowReaderProperties aprops;
  aprops.set_use_threads(false);
  std::unique_ptr<parquet::arrow::FileReader> r;
  AQ_RETURN_IF_ERROR(FromArrow(builder.properties(aprops)->Build(&r), path, StatusCode::kFormatInvalid));
  return r;
}

void ModelReader::Impl::Return(std::unique_ptr<parquet::arrow::FileReader> r) const {
  std::lock_guard lk(pool_mu);
  idle.push_back(std::move(r));
}

Result<std::shared_ptr<arrow::Array>> ModelReader::Impl::ReadCell(int rg, const char* column) const {
  const auto it = columns.find(column);
  if (it == columns.end()) return Err(StatusCode::kFormatInvalid, std::string("no column '") + column + "'");
  AQ_ASSIGN_OR_RETURN(std::unique_ptr<parquet::arrow::FileReader> r, Borrow());
  std::shared_ptr<arrow::ChunkedArray> chunked;
  const arrow::Status read = r->RowGroup(rg)->Column(it->second)->Read(&chunked);
  Return(std::move(r));
  AQ_RETURN_IF_ERROR(FromArrow(read, path + ": row group " + std::to_string(rg) + ", column " + column,
                               StatusCode::kCorrupt));
  if (chunked->num_chunks() == 1) return chunked->chunk(0);
  std::shared_ptr<arrow::Array> flat;
  AQ_RETURN_IF_ERROR(FromArrow(arrow::Concatenate(chunked->chunks()).Value(&flat), path));
  return flat;
}

// Payload bytes come through Parquet's column reader, which hands out pointers into the page
// (a slice of the memory map for uncompressed pages): one copy, into `out`, instead of the
// Arrow array in between. The low-level reader reports damage by throwing; it is caught here.
Status ModelReader::Impl::ReadPayload(const ModelTensorInfo& t, const char* column,
                                      std::vector<uint8_t>& out) const {
  out.clear();
  const auto it = columns.find(column);
  if (it == columns.end()) return Err(StatusCode::kFormatInvalid, std::string("no column '") + column + "'");
  AQ_ASSIGN_OR_RETURN(std::unique_ptr<parquet::arrow::FileReader> r, Borrow());
  Status st;
  try {
    for (const auto& [rg, idx] : t.rows) {
      auto col = r->parquet_reader()->RowGroup(rg)->Column(it->second);
      if (col->type() != parquet::Type::BYTE_ARRAY) {
        st = Err(StatusCode::kFormatInvalid, std::string("column ") + column + " is not binary");
        break;
      }
      auto* bytes = static_cast<parquet::ByteArrayReader*>(col.get());
      if (idx > 0 && bytes->Skip(idx) != idx) {
        st = Err(StatusCode::kCorrupt, "tensor '" + t.name + "': row " + std::to_string(idx) + " missing");
        break;
      }
      parquet::ByteArray value;
      int16_t def = 0;
      int64_t read = 0;
      bytes->ReadBatch(1, &def, nullptr, &value, &read);
      if (read != 1) {
        st = Err(StatusCode::kCorrupt, "tensor '" + t.name + "': no value in column " + column);
        break;
      }
      out.insert(out.end(), value.ptr, value.ptr + value.len);
    }
  } catch (const std::exception& e) {
    st = Err(StatusCode::kCorrupt, "tensor '" + t.name + "', column " + column + ": " + e.what());
  }
  Return(std::move(r));
  return st;
}

ModelReader::ModelReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ModelReader::~ModelReader() = default;
const std::string& ModelReader::path() const { return impl_->path; }
bool ModelReader::legacy() const { return impl_->legacy; }
const std::map<std::string, std::string>& ModelReader::metadata() const { return impl_->metadata; }
const std::vector<ModelTensorInfo>& ModelReader::tensors() const { return impl_->tensors; }
const ModelTensorInfo* ModelReader::Find(const std::string& name) const {
  const auto it = impl_->by_name.find(name);
  return it == impl_->by_name.end() ? nullptr : &impl_->tensors[it->second];
}

Result<std::unique_ptr<ModelReader>> ModelReader::Open(const std::string& path,
                                                       const ModelReaderOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  AQ_RETURN_IF_ERROR(FromArrow(arrow::SetCpuThreadPoolCapacity(std::max(1, options.arrow_threads)), path));
  // Memory-mapped: uncompressed payload pages are then slices of the map, not fresh copies.
  auto file = arrow::io::MemoryMappedFile::Open(path, arrow::io::FileMode::READ);
  if (!file.ok()) {
    const bool missing = file.status().ToString().find("No such file") != std::string::npos;
    return Status(missing ? StatusCode::kNotFound : StatusCode::kIoError,
                  path + ": cannot open: " + file.status().message());
  }
  impl->file = *file;
  impl->props.set_page_checksum_verification(options.verify_checksums);
  parquet::ArrowReaderProperties aprops;
  aprops.set_use_threads(false);
  parquet::arrow::FileReaderBuilder builder;
  AQ_RETURN_IF_ERROR(FromArrow(builder.Open(impl->file, impl->props), path + ": not a readable Parquet file",
                               StatusCode::kFormatInvalid));
  AQ_RETURN_IF_ERROR(FromArrow(builder.properties(aprops)->Build(&impl->reader), path, StatusCode::kFormatInvalid));

  const auto fmeta = impl->reader->parquet_reader()->metadata();
  impl->footer = fmeta;
  if (const auto kv = fmeta->key_value_metadata()) {
    for (int64_t i = 0; i < kv->size(); ++i) {
      if (kv->key(i) != "ARROW:schema") impl->metadata[kv->key(i)] = kv->value(i);
    }
  }
  std::shared_ptr<arrow::Schema> schema;
  AQ_RETURN_IF_ERROR(FromArrow(impl->reader->GetSchema(&schema), path, StatusCode::kFormatInvalid));
  for (int i = 0; i < schema->num_fields(); ++i) impl->columns[schema->field(i)->name()] = i;

  const auto fmt = impl->metadata.find(pq::key::kFormat);
  if (fmt != impl->metadata.end()) {
    if (fmt->second != kModelFormatName) {
      return impl->Err(StatusCode::kFormatInvalid, "format '" + fmt->second + "' is not " + kModelFormatName);
    }
    const auto ver = impl->metadata.find(pq::key::kVersion);
    const std::string v = ver == impl->metadata.end() ? "" : ver->second;
    if (v.rfind("2.", 0) != 0) {
      return impl->Err(StatusCode::kUnsupported,
                       "format version '" + v + "' is not supported (this reader knows 2.x)");
    }
    // Every column of the schema must be there with its type (payload may be binary or
    // large_binary if another tool rewrote the file).
    for (const auto& f : pq::ModelSchema()->fields()) {
      const auto got = schema->GetFieldByName(f->name());
      if (!got) return impl->Err(StatusCode::kFormatInvalid, "missing column '" + f->name() + "'");
      const bool payload_ok = pq::IsPayloadColumn(f->name()) && got->type()->id() == arrow::Type::BINARY;
      if (!got->type()->Equals(*f->type()) && !payload_ok) {
        return impl->Err(StatusCode::kFormatInvalid, "column '" + f->name() + "' has type " +
                                                         got->type()->ToString() + ", expected " +
                                                         f->type()->ToString());
      }
    }
  } else {
    for (const char* c : {"layer_name", "shape", "dtype", "data", "num_params", "quant_type", "scales",
                          "zero_points", "quant_axis", "group_size"}) {
      if (!impl->columns.count(c)) {
        return impl->Err(StatusCode::kFormatInvalid,
                         std::string("not an ArrowQuant model file: no '") + pq::key::kFormat +
                             "' key and no seed-schema column '" + c + "'");
      }
    }
    impl->legacy = true;
  }

  // Light columns of every row group: names, shapes, formats, metrics, diffusion fields.
  // (In the seed schema scales and zero-points are small float lists, read with the rest.)
  std::vector<int> light;
  for (const auto& [name, idx] : impl->columns) {
    if (impl->legacy ? name != col::kData : !pq::IsPayloadColumn(name)) light.push_back(idx);
  }
  std::sort(light.begin(), light.end());
  const int groups = fmeta->num_row_groups();
  std::map<std::string, int> expected_chunks;
  // One read of the light columns for the whole file (per-row-group reads cost ~25 us per
  // column chunk in set-up alone, which dominated opening a model of ~700 tensors).
  std::shared_ptr<arrow::Table> table;
  AQ_RETURN_IF_ERROR(FromArrow(impl->reader->ReadTable(light).Value(&table), path, StatusCode::kCorrupt));
  AQ_RETURN_IF_ERROR(FromArrow(table->CombineChunks().Value(&table), path, StatusCode::kCorrupt));
  std::map<std::string, std::shared_ptr<arrow::Array>> light_columns;
  for (int c = 0; c < table->num_columns(); ++c) {
    light_columns[table->field(c)->name()] = table->column(c)->num_chunks() ? table->column(c)->chunk(0) : nullptr;
  }
  auto column = [&](const char* name) -> std::shared_ptr<arrow::Array> {
    const auto it = light_columns.find(name);
    return it == light_columns.end() ? nullptr : it->second;
  };
  int64_t base = 0;
  for (int rg = 0; rg < groups; ++rg) {
    const int64_t rows_in_group = fmeta->RowGroup(rg)->num_rows();
    if (base + rows_in_group > table->num_rows()) {
      return impl->Err(StatusCode::kCorrupt, "row group " + std::to_string(rg) + " holds fewer rows than its metadata says");
    }
    for (int64_t i = 0; i < rows_in_group; ++i) {
      const int64_t row = base + i;
      auto bad = [&](const Status& st) {
        return impl->Err(st.code() == StatusCode::kOk ? StatusCode::kCorrupt : st.code(),
                         "row group " + std::to_string(rg) + ": " + st.message());
      };
      auto name_r = Str(column(col::kName), row);
      if (!name_r.ok()) return bad(name_r.status());
      const std::string name = *name_r;
      ModelTensorInfo* t = nullptr;
      int chunk = 0, nchunks = 1;
      if (!impl->legacy) {
        auto c = Int(column(col::kChunk), row), n = Int(column(col::kNumChunks), row);
        if (!c.ok() || !n.ok()) return bad(c.ok() ? n.status() : c.status());
        chunk = static_cast<int>(*c);
        nchunks = static_cast<int>(*n);
      }
      if (chunk == 0) {
        if (impl->by_name.count(name)) {
          return impl->Err(StatusCode::kDuplicateName, "tensor '" + name + "' appears twice");
        }
        impl->by_name[name] = impl->tensors.size();
        impl->tensors.emplace_back();
        t = &impl->tensors.back();
        t->name = name;
        auto shape = NumList<int64_t>(column(col::kShape), row);
        if (!shape.ok() || !shape->has_value()) {
          return bad(shape.ok() ? Status(StatusCode::kCorrupt, "tensor '" + name + "': no shape") : shape.status());
        }
        uint64_t params = 1;
        for (int64_t d : **shape) {
          if (d < 0 || __builtin_mul_overflow(params, static_cast<uint64_t>(d), &params)) {
            return impl->Err(StatusCode::kCorrupt, "tensor '" + name + "': invalid shape");
          }
          t->shape.push_back(static_cast<uint64_t>(d));
        }
        t->num_params = params;
        AQ_ASSIGN_OR_RETURN(t->source_dtype, Str(column(col::kDType), row));
        AQ_ASSIGN_OR_RETURN(std::string qt, Str(column(col::kQuantType), row));
        if (impl->legacy) {
          std::string lq = qt;
          for (auto& ch : lq) ch = static_cast<char>(std::tolower(ch));
          if (lq == "int8" || lq == "int4" || lq == "int2") {
            t->quant_type = "legacy-" + lq;
            auto sc = NumList<float>(column(col::kScales), row);
            auto zp = NumList<float>(column(col::kZeros), row);
            if (!sc.ok() || !zp.ok() || !sc->has_value() || !zp->has_value()) {
              return impl->Err(StatusCode::kFormatInvalid, "tensor '" + name + "': seed scales/zero_points must be float lists");
            }
            impl->legacy_params[name] = {**sc, **zp};
          } else if (auto d = LegacyDType(lq == "none" ? t->source_dtype : lq)) {
            t->quant_type = "raw";
            t->raw_dtype = *d;
          } else {
            return impl->Err(StatusCode::kUnsupported, "tensor '" + name + "': seed quant_type '" + qt + "' is not known");
          }
        } else {
          t->quant_type = qt;
          AQ_ASSIGN_OR_RETURN(t->component, Str(column(col::kComponent), row));
          if (qt == "raw") {
            const auto d = DTypeFromSafeTensorsName(t->source_dtype);
            if (!d) return impl->Err(StatusCode::kCorrupt, "tensor '" + name + "': unknown dtype '" + t->source_dtype + "'");
            t->raw_dtype = *d;
          } else {
            AQ_ASSIGN_OR_RETURN(int64_t bits, Int(column(col::kBits), row));
            AQ_ASSIGN_OR_RETURN(int64_t group, Int(column(col::kGroupSize), row));
            AQ_ASSIGN_OR_RETURN(std::string scheme, Str(column(col::kScheme), row));
            AQ_ASSIGN_OR_RETURN(std::string method, Str(column(col::kMethod), row));
            AQ_ASSIGN_OR_RETURN(std::string scales, Str(column(col::kScaleDType), row));
            auto spec = SpecFrom(static_cast<int>(bits), static_cast<int>(group), scheme, method, scales);
            if (!spec.ok() || qt != "int" + std::to_string(bits)) {
              return impl->Err(StatusCode::kCorrupt, "tensor '" + name + "': inconsistent quantization fields (" +
                                                         (spec.ok() ? qt : spec.status().message()) + ")");
            }
            t->spec = *spec;
          }
          const auto cos = column(col::kCosine), sq = column(col::kSqnr), rr = column(col::kRelRmse);
          if (!cos->IsNull(row)) {
            ErrorMetrics m;
            m.cosine = static_cast<const arrow::DoubleArray&>(*cos).Value(row);
            m.sqnr_db = static_cast<const arrow::DoubleArray&>(*sq).Value(row);
            m.rel_rmse = static_cast<const arrow::DoubleArray&>(*rr).Value(row);
            m.count = params;
            t->metrics = m;
          }
          if (!column(col::kTimeGroups)->IsNull(row)) {
            TimeAwareParams ta;
            AQ_ASSIGN_OR_RETURN(int64_t g, Int(column(col::kTimeGroups), row));
            AQ_ASSIGN_OR_RETURN(int64_t ab, Int(column(col::kActBits), row));
            ta.num_groups = static_cast<int32_t>(g);
            ta.act_bits = static_cast<int32_t>(ab);
            AQ_ASSIGN_OR_RETURN(auto b, NumList<int32_t>(column(col::kTimeBounds), row));
            AQ_ASSIGN_OR_RETURN(auto s, NumList<float>(column(col::kActScales), row));
            AQ_ASSIGN_OR_RETURN(auto z, NumList<int32_t>(column(col::kActZeros), row));
            ta.group_bounds = b.value_or(std::vector<int32_t>{});
            ta.act_scales = s.value_or(std::vector<float>{});
            ta.act_zero_points = z.value_or(std::vector<int32_t>{});
            t->time_aware = ta;
          }
          AQ_ASSIGN_OR_RETURN(auto eq, NumList<float>(column(col::kEqScales), row));
          if (eq) {
            SpatialParams sp;
            sp.equalization_scales = *eq;
            const auto a = column(col::kSmoothAlpha);
            sp.smoothing_alpha = a->IsNull(row) ? 0.0f : static_cast<const arrow::FloatArray&>(*a).Value(row);
            t->spatial = sp;
          }
          AQ_ASSIGN_OR_RETURN(auto mn, NumList<float>(column(col::kActMin), row));
          if (mn) {
            ActivationStats as;
            as.min = *mn;
            AQ_ASSIGN_OR_RETURN(auto mx, NumList<float>(column(col::kActMax), row));
            AQ_ASSIGN_OR_RETURN(auto am, NumList<float>(column(col::kActAbsMax), row));
            as.max = mx.value_or(std::vector<float>{});
            as.absmax = am.value_or(std::vector<float>{});
            t->activation_stats = as;
          }
        }
      } else {
        const auto it = impl->by_name.find(name);
        if (it == impl->by_name.end() || impl->tensors[it->second].rows.size() != static_cast<size_t>(chunk)) {
          return impl->Err(StatusCode::kCorrupt, "tensor '" + name + "': chunk " + std::to_string(chunk) + " out of order");
        }
        t = &impl->tensors[it->second];
      }
      t->rows.emplace_back(rg, i);
      expected_chunks[name] = nchunks;
    }
    base += rows_in_group;
  }
  for (const auto& t : impl->tensors) {
    if (t.rows.size() != static_cast<size_t>(expected_chunks[t.name])) {
      return impl->Err(StatusCode::kCorrupt, "tensor '" + t.name + "' has " + std::to_string(t.rows.size()) +
                                                 " of its " + std::to_string(expected_chunks[t.name]) + " rows");
    }
  }
  return std::unique_ptr<ModelReader>(new ModelReader(std::move(impl)));
}

Status ModelReader::Impl::ReadQuantizedInto(const ModelTensorInfo& tinfo, QuantizedTensor& q) const {
  const ModelTensorInfo* t = &tinfo;
  const std::string& name = t->name;
  if (!t->spec) {
    return Err(StatusCode::kInvalidArgument, "tensor '" + name + "' is " + t->quant_type +
                                                 ", not an ArrowQuant-packed tensor");
  }
  q.spec = *t->spec;
  q.shape = t->shape;
  q.rows = t->shape.size() >= 2 ? t->shape[0] : 1;
  q.cols = q.rows ? t->num_params / q.rows : 0;
  const auto sd = DTypeFromSafeTensorsName(t->source_dtype);
  q.source_dtype = sd.value_or(DType::kF32);
  const char* cols[4] = {col::kData, col::kScales, col::kZeros, col::kSuper};
  std::vector<uint8_t>* bufs[4] = {&q.codes, &q.scales, &q.zeros, &q.super_scales};
  for (int k = 0; k < 4; ++k) AQ_RETURN_IF_ERROR(ReadPayload(*t, cols[k], *bufs[k]));
  const Status st = q.Validate();
  if (!st.ok()) return Err(StatusCode::kCorrupt, "tensor '" + name + "': " + st.message());
  return Status::OK();
}

Result<QuantizedTensor> ModelReader::ReadQuantized(const std::string& name) const {
  const ModelTensorInfo* t = Find(name);
  if (!t) return impl_->Err(StatusCode::kNotFound, "no tensor named '" + name + "'");
  QuantizedTensor q;
  AQ_RETURN_IF_ERROR(impl_->ReadQuantizedInto(*t, q));
  return q;
}

Result<std::vector<std::byte>> ModelReader::ReadRaw(const std::string& name) const {
  const ModelTensorInfo* t = Find(name);
  if (!t) return impl_->Err(StatusCode::kNotFound, "no tensor named '" + name + "'");
  if (t->quant_type != "raw") {
    return impl_->Err(StatusCode::kInvalidArgument, "tensor '" + name + "' is quantized (" + t->quant_type + ")");
  }
  std::vector<uint8_t> b;
  AQ_RETURN_IF_ERROR(impl_->ReadPayload(*t, col::kData, b));
  if (b.size() != t->num_params * ElementBytes(t->raw_dtype)) {
    return impl_->Err(StatusCode::kCorrupt, "tensor '" + name + "': " + std::to_string(b.size()) +
                                                " bytes, shape and dtype need " +
                                                std::to_string(t->num_params * ElementBytes(t->raw_dtype)));
  }
  std::vector<std::byte> out(b.size());
  std::memcpy(out.data(), b.data(), b.size());
  return out;
}

// f32 values into `out` as F32, F16 or BF16 (round to nearest even); `out` may be unaligned.
static void StoreF32(std::span<const float> f32, DType dtype, std::span<std::byte> out) {
  if (dtype == DType::kF32) {
    std::memcpy(out.data(), f32.data(), f32.size() * 4);
    return;
  }
  std::vector<uint16_t> h(f32.size());
  if (dtype == DType::kF16) F32ToF16(f32, h);
  else F32ToBF16(f32, h);
  std::memcpy(out.data(), h.data(), h.size() * 2);
}

Status ModelReader::Dequantize(const std::string& name, DType dtype, std::span<std::byte> out,
                               int threads) const {
  const ModelTensorInfo* t = Find(name);
  if (!t || !t->spatial || t->spatial->equalization_scales.empty()) {
    return DequantizeAsStored(name, dtype, out, threads);
  }
  const std::vector<float>& s = t->spatial->equalization_scales;
  if (t->shape.size() < 2 || t->shape[1] != s.size()) {
    return impl_->Err(StatusCode::kCorrupt, "tensor '" + name + "': " + std::to_string(s.size()) +
                                                " equalization scales for its input channels");
  }
  const size_t n = t->num_params;
  if (out.size() != n * ElementBytes(dtype)) return DequantizeAsStored(name, dtype, out, threads);
  std::vector<float> w(n);
  AQ_RETURN_IF_ERROR(DequantizeAsStored(
      name, DType::kF32, std::as_writable_bytes(std::span<float>(w)), threads));
  // [out, in, inner...]: W = (W / s) * s along the input-channel axis.
  const size_t in = s.size(), inner = n / std::max<size_t>(1, t->shape[0] * in);
  for (size_t i = 0; i < n; ++i) w[i] *= s[(i / inner) % in];
  StoreF32(w, dtype, out);
  return Status::OK();
}

Status ModelReader::DequantizeAsStored(const std::string& name, DType dtype,
                                       std::span<std::byte> out, int threads) const {
  const ModelTensorInfo* t = Find(name);
  if (!t) return impl_->Err(StatusCode::kNotFound, "no tensor named '" + name + "'");
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return Status(StatusCode::kInvalidArgument, "dequantize to F32, F16 or BF16 only");
  }
  if (t->quant_type == "raw" && !Traits(t->raw_dtype).quantizable) {
    return impl_->Err(StatusCode::kUnsupported, "tensor '" + name + "' is " +
                                                    std::string(Traits(t->raw_dtype).safetensors_name) +
                                                    "; read it with ReadRaw");
  }
  const size_t n = t->num_params, es = ElementBytes(dtype);
  if (out.size() != n * es) {
    return impl_->Err(StatusCode::kSizeMismatch, "tensor '" + name + "': output has " +
                                                     std::to_string(out.size()) + " bytes, need " +
                                                     std::to_string(n * es));
  }
  std::vector<float> f32;
  if (t->spec) {
    // Per-thread scratch: loading a model dequantizes hundreds of tensors in a row, and fresh
    // buffers for each would be paid for in page faults.
    thread_local QuantizedTensor scratch;
    AQ_RETURN_IF_ERROR(impl_->ReadQuantizedInto(*t, scratch));
    return arrowquant::Dequantize(scratch, dtype, out, QuantOptions{threads});
  }
  if (t->quant_type == "raw") {
    if (!Traits(t->raw_dtype).quantizable) {
      return impl_->Err(StatusCode::kUnsupported, "tensor '" + name + "' is " +
                                                      std::string(Traits(t->raw_dtype).safetensors_name) +
                                                      "; read it with ReadRaw");
    }
    AQ_ASSIGN_OR_RETURN(std::vector<std::byte> raw, ReadRaw(name));
    if (t->raw_dtype == dtype) {
      std::memcpy(out.data(), raw.data(), raw.size());
      return Status::OK();
    }
    f32.resize(n);
    for (size_t i = 0; i < n; ++i) {
      if (t->raw_dtype == DType::kF32) std::memcpy(&f32[i], raw.data() + 4 * i, 4);
      else {
        uint16_t h;
        std::memcpy(&h, raw.data() + 2 * i, 2);
        f32[i] = t->raw_dtype == DType::kF16 ? F16BitsToF32(h) : BF16BitsToF32(h);
      }
    }
  } else {
    // Seed rows: one code per byte, w = (code - zero_point[g]) * scale[g] over groups of
    // group_size consecutive elements (docs/format.md, "Seed schema").
    std::vector<uint8_t> codes;
    AQ_RETURN_IF_ERROR(impl_->ReadPayload(*t, col::kData, codes));
    const auto& [scales, zeros] = impl_->legacy_params.at(name);
    auto gcell = impl_->ReadCell(t->rows[0].first, col::kGroupSize);
    if (!gcell.ok()) return gcell.status();
    AQ_ASSIGN_OR_RETURN(int64_t g, Int(*gcell, t->rows[0].second));
    if (g <= 0) g = static_cast<int64_t>(n);
    const size_t groups = n == 0 ? 0 : (n + static_cast<size_t>(g) - 1) / static_cast<size_t>(g);
    if (codes.size() != n || scales.size() != groups || zeros.size() != groups) {
      return impl_->Err(StatusCode::kCorrupt, "tensor '" + name + "': seed data has " +
                                                  std::to_string(codes.size()) + " codes and " +
                                                  std::to_string(scales.size()) + " scales for " +
                                                  std::to_string(n) + " values in groups of " +
                                                  std::to_string(g));
    }
    f32.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const size_t gi = i / static_cast<size_t>(g);
      f32[i] = (static_cast<float>(static_cast<uint8_t>(codes[i])) - zeros[gi]) * scales[gi];
    }
  }
  StoreF32(f32, dtype, out);
  return Status::OK();
}

}  // namespace arrowquant
