// ModelReader::Open: checks the footer and schema, then reads the light columns (names, shapes,
// formats, metrics, calibration fields) of every row into ModelTensorInfo. No payload is read.
// Two schemas: ArrowQuant's own, and the seed project's base V2 schema (legacy, read-only).
#include <algorithm>
#include <filesystem>
#include <map>
#include <string>

#include "arrowquant/model_file.h"
#include "formats/parquet/cells.h"
#include "formats/parquet/model_schema.h"
#include "formats/parquet/reader_impl.h"

namespace arrowquant {

using pq::FromArrow;
using pq::IntCell;
using pq::ListCell;
using pq::StrCell;
namespace col = pq::col;

namespace {

using Columns = std::map<std::string, std::shared_ptr<arrow::Array>>;

// The light columns of one row; `column(name)` is null for a column the file does not have.
struct Row {
  const Columns& columns;
  int64_t index;
  std::shared_ptr<arrow::Array> column(const char* name) const {
    const auto it = columns.find(name);
    return it == columns.end() ? nullptr : it->second;
  }
  Result<int64_t> Int(const char* c) const { return IntCell(column(c), index); }
  Result<std::string> Str(const char* c) const { return StrCell(column(c), index); }
  template <typename T>
  Result<std::optional<std::vector<T>>> List(const char* c) const {
    return ListCell<T>(column(c), index);
  }
  bool IsNull(const char* c) const {
    const auto a = column(c);
    return !a || a->IsNull(index);
  }
};

Status OpenFile(ModelReader::Impl& impl, const ModelReaderOptions& options,
                std::unique_ptr<parquet::arrow::FileReader>& reader) {
  // Memory-mapped: uncompressed payload pages are then slices of the map, not fresh copies.
  auto file = arrow::io::MemoryMappedFile::Open(impl.path, arrow::io::FileMode::READ);
  if (!file.ok()) {
    return Status(StatusCode::kIoError, impl.path + ": cannot open: " + file.status().message());
  }
  impl.file = *file;
  impl.props.set_page_checksum_verification(options.verify_checksums);
  parquet::ArrowReaderProperties aprops;
  aprops.set_use_threads(false);  // Arrow's process-wide pools are never used
  parquet::arrow::FileReaderBuilder builder;
  AQ_RETURN_IF_ERROR(FromArrow(builder.Open(impl.file, impl.props),
                               impl.path + ": not a readable Parquet file",
                               StatusCode::kFormatInvalid));
  AQ_RETURN_IF_ERROR(
      FromArrow(builder.properties(aprops)->Build(&reader), impl.path, StatusCode::kFormatInvalid));
  impl.footer = reader->parquet_reader()->metadata();
  if (const auto kv = impl.footer->key_value_metadata()) {
    for (int64_t i = 0; i < kv->size(); ++i) {
      if (kv->key(i) != "ARROW:schema") impl.metadata[kv->key(i)] = kv->value(i);
    }
  }
  return Status::OK();
}

// ArrowQuant files name their format and version; every column must be there with its type
// (payload may be binary or large_binary if another tool rewrote the file). Files without the
// format key must carry the seed schema's columns.
Status CheckSchema(ModelReader::Impl& impl, const arrow::Schema& schema) {
  for (int i = 0; i < schema.num_fields(); ++i) impl.columns[schema.field(i)->name()] = i;
  const auto fmt = impl.metadata.find(pq::key::kFormat);
  if (fmt == impl.metadata.end()) {
    for (const char* c : {"layer_name", "shape", "dtype", "data", "num_params", "quant_type",
                          "scales", "zero_points", "quant_axis", "group_size"}) {
      if (!impl.columns.count(c)) {
        return impl.Err(StatusCode::kFormatInvalid,
                        std::string("not an ArrowQuant model file: no '") + pq::key::kFormat +
                            "' key and no seed-schema column '" + c + "'");
      }
    }
    impl.legacy = true;
    return Status::OK();
  }
  if (fmt->second != kModelFormatName) {
    return impl.Err(StatusCode::kFormatInvalid,
                    "format '" + fmt->second + "' is not " + kModelFormatName);
  }
  const auto ver = impl.metadata.find(pq::key::kVersion);
  const std::string v = ver == impl.metadata.end() ? "" : ver->second;
  if (v.rfind("2.", 0) != 0) {
    return impl.Err(StatusCode::kUnsupported,
                    "format version '" + v + "' is not supported (this reader knows 2.x)");
  }
  for (const auto& f : pq::ModelSchema()->fields()) {
    const auto got = schema.GetFieldByName(f->name());
    if (!got) return impl.Err(StatusCode::kFormatInvalid, "missing column '" + f->name() + "'");
    const bool payload_ok =
        pq::IsPayloadColumn(f->name()) && got->type()->id() == arrow::Type::BINARY;
    if (!got->type()->Equals(*f->type()) && !payload_ok) {
      return impl.Err(StatusCode::kFormatInvalid, "column '" + f->name() + "' has type " +
                                                      got->type()->ToString() + ", expected " +
                                                      f->type()->ToString());
    }
  }
  return Status::OK();
}

// The footer's row counts, checked before they size any buffer.
Status CheckRowCounts(const ModelReader::Impl& impl, const ModelReaderOptions& options) {
  uint64_t total = 0;
  for (int rg = 0; rg < impl.footer->num_row_groups(); ++rg) {
    const int64_t n = impl.footer->RowGroup(rg)->num_rows();
    if (n < 0) {
      return impl.Err(StatusCode::kCorrupt,
                      "row group " + std::to_string(rg) + " claims " + std::to_string(n) + " rows");
    }
    total += static_cast<uint64_t>(n);
    if (total > options.max_rows) {
      return impl.Err(StatusCode::kLimitExceeded,
                      "the footer claims more than " + std::to_string(options.max_rows) +
                          " rows (tensor chunks), the reader's limit (max_rows)");
    }
  }
  return Status::OK();
}

// One read of the light columns for the whole file (per-row-group reads cost ~25 us per column
// chunk in set-up alone, which dominated opening a model of ~700 tensors). In the seed schema
// scales and zero-points are small float lists, read with the rest.
Result<std::pair<Columns, int64_t>> ReadLightColumns(const ModelReader::Impl& impl,
                                                     parquet::arrow::FileReader& reader) {
  std::vector<int> light;
  for (const auto& [name, idx] : impl.columns) {
    if (impl.legacy ? name != col::kData : !pq::IsPayloadColumn(name)) light.push_back(idx);
  }
  std::sort(light.begin(), light.end());
  std::shared_ptr<arrow::Table> table;
  AQ_RETURN_IF_ERROR(
      FromArrow(reader.ReadTable(light).Value(&table), impl.path, StatusCode::kCorrupt));
  AQ_RETURN_IF_ERROR(
      FromArrow(table->CombineChunks().Value(&table), impl.path, StatusCode::kCorrupt));
  Columns columns;
  for (int c = 0; c < table->num_columns(); ++c) {
    columns[table->field(c)->name()] =
        table->column(c)->num_chunks() ? table->column(c)->chunk(0) : nullptr;
  }
  return std::make_pair(std::move(columns), table->num_rows());
}

Status ParseShape(const Row& row, ModelTensorInfo& t) {
  AQ_ASSIGN_OR_RETURN(auto shape, row.List<int64_t>(col::kShape));
  if (!shape) return Status(StatusCode::kCorrupt, "tensor '" + t.name + "': no shape");
  uint64_t params = 1;
  for (int64_t d : *shape) {
    if (d < 0 || __builtin_mul_overflow(params, static_cast<uint64_t>(d), &params)) {
      return Status(StatusCode::kCorrupt, "tensor '" + t.name + "': invalid shape");
    }
    t.shape.push_back(static_cast<uint64_t>(d));
  }
  t.num_params = params;
  return Status::OK();
}

// Seed rows: quant_type int8/int4/int2 (one code per byte, float-list scales and zero-points),
// or unquantized values of `dtype` (quant_type none, or the dtype's own name).
Status ParseSeedRow(ModelReader::Impl& impl, const Row& row, ModelTensorInfo& t) {
  AQ_ASSIGN_OR_RETURN(std::string qt, row.Str(col::kQuantType));
  std::string lq = qt;
  for (auto& ch : lq) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (lq == "int8" || lq == "int4" || lq == "int2") {
    t.quant_type = "legacy-" + lq;
    auto sc = row.List<float>(col::kScales);
    auto zp = row.List<float>(col::kZeros);
    auto g = row.Int(col::kGroupSize);
    if (!sc.ok() || !zp.ok() || !sc->has_value() || !zp->has_value() || !g.ok()) {
      return Status(StatusCode::kFormatInvalid,
                    "tensor '" + t.name +
                        "': seed scales/zero_points must be float lists and group_size an integer");
    }
    impl.seed_params[t.name] = {std::move(**sc), std::move(**zp), *g};
    return Status::OK();
  }
  const std::string& named = lq == "none" ? t.source_dtype : qt;
  const auto d = DTypeFromName(named);
  if (!d) {
    return Status(StatusCode::kUnsupported,
                  "tensor '" + t.name + "': seed quant_type '" + qt + "'" +
                      (lq == "none" ? " with dtype '" + t.source_dtype + "'" : std::string()) +
                      ": dtype not known (quant_type is int8/int4/int2, none with a dtype, or a "
                      "dtype name)");
  }
  t.quant_type = "raw";
  t.raw_dtype = *d;
  t.source_dtype = std::string(Traits(*d).safetensors_name);
  return Status::OK();
}

Status ParseCalibration(const Row& row, ModelTensorInfo& t) {
  if (!row.IsNull(col::kTimeGroups)) {
    TimeAwareParams ta;
    AQ_ASSIGN_OR_RETURN(int64_t g, row.Int(col::kTimeGroups));
    AQ_ASSIGN_OR_RETURN(int64_t ab, row.Int(col::kActBits));
    ta.num_groups = static_cast<int32_t>(g);
    ta.act_bits = static_cast<int32_t>(ab);
    AQ_ASSIGN_OR_RETURN(auto b, row.List<int32_t>(col::kTimeBounds));
    AQ_ASSIGN_OR_RETURN(auto s, row.List<float>(col::kActScales));
    AQ_ASSIGN_OR_RETURN(auto z, row.List<int32_t>(col::kActZeros));
    ta.group_bounds = b.value_or(std::vector<int32_t>{});
    ta.act_scales = s.value_or(std::vector<float>{});
    ta.act_zero_points = z.value_or(std::vector<int32_t>{});
    t.time_aware = ta;
  }
  AQ_ASSIGN_OR_RETURN(auto eq, row.List<float>(col::kEqScales));
  if (eq) {
    SpatialParams sp;
    sp.equalization_scales = *eq;
    if (!row.IsNull(col::kSmoothAlpha)) {
      sp.smoothing_alpha =
          static_cast<const arrow::FloatArray&>(*row.column(col::kSmoothAlpha)).Value(row.index);
    }
    t.spatial = sp;
  }
  AQ_ASSIGN_OR_RETURN(auto mn, row.List<float>(col::kActMin));
  if (mn) {
    ActivationStats as;
    as.min = *mn;
    AQ_ASSIGN_OR_RETURN(auto mx, row.List<float>(col::kActMax));
    AQ_ASSIGN_OR_RETURN(auto am, row.List<float>(col::kActAbsMax));
    as.max = mx.value_or(std::vector<float>{});
    as.absmax = am.value_or(std::vector<float>{});
    t.activation_stats = as;
  }
  return Status::OK();
}

Status ParseArrowQuantRow(const Row& row, ModelTensorInfo& t) {
  AQ_ASSIGN_OR_RETURN(t.quant_type, row.Str(col::kQuantType));
  AQ_ASSIGN_OR_RETURN(t.component, row.Str(col::kComponent));
  if (t.quant_type == "raw") {
    const auto d = DTypeFromSafeTensorsName(t.source_dtype);
    if (!d) {
      return Status(StatusCode::kCorrupt,
                    "tensor '" + t.name + "': unknown dtype '" + t.source_dtype + "'");
    }
    t.raw_dtype = *d;
  } else {
    AQ_ASSIGN_OR_RETURN(int64_t bits, row.Int(col::kBits));
    AQ_ASSIGN_OR_RETURN(int64_t group, row.Int(col::kGroupSize));
    AQ_ASSIGN_OR_RETURN(std::string scheme, row.Str(col::kScheme));
    AQ_ASSIGN_OR_RETURN(std::string method, row.Str(col::kMethod));
    AQ_ASSIGN_OR_RETURN(std::string scales, row.Str(col::kScaleDType));
    auto spec = QuantSpec::FromFields(static_cast<int>(bits), static_cast<int>(group), scheme,
                                      method, scales);
    if (!spec.ok() || t.quant_type != "int" + std::to_string(bits)) {
      return Status(StatusCode::kCorrupt,
                    "tensor '" + t.name + "': inconsistent quantization fields (" +
                        (spec.ok() ? t.quant_type : spec.status().message()) + ")");
    }
    t.spec = *spec;
  }
  if (!row.IsNull(col::kCosine)) {
    ErrorMetrics m;
    m.cosine = static_cast<const arrow::DoubleArray&>(*row.column(col::kCosine)).Value(row.index);
    m.sqnr_db = static_cast<const arrow::DoubleArray&>(*row.column(col::kSqnr)).Value(row.index);
    m.rel_rmse =
        static_cast<const arrow::DoubleArray&>(*row.column(col::kRelRmse)).Value(row.index);
    m.count = t.num_params;
    t.metrics = m;
  }
  return ParseCalibration(row, t);
}

// The first row of a tensor describes it; later rows (chunks) only add payload.
Status ParseRows(ModelReader::Impl& impl, const Columns& columns, int64_t table_rows) {
  std::map<std::string, int> expected_chunks;
  int64_t base = 0;
  for (int rg = 0; rg < impl.footer->num_row_groups(); ++rg) {
    const int64_t rows_in_group = impl.footer->RowGroup(rg)->num_rows();
    if (base + rows_in_group > table_rows) {
      return impl.Err(StatusCode::kCorrupt, "row group " + std::to_string(rg) +
                                                " holds fewer rows than its metadata says");
    }
    for (int64_t i = 0; i < rows_in_group; ++i) {
      const Row row{columns, base + i};
      auto bad = [&](const Status& st) {
        return impl.Err(st.code(), "row group " + std::to_string(rg) + ": " + st.message());
      };
      auto name = row.Str(col::kName);
      if (!name.ok()) return bad(name.status());
      int chunk = 0, nchunks = 1;
      if (!impl.legacy) {
        auto c = row.Int(col::kChunk), n = row.Int(col::kNumChunks);
        if (!c.ok() || !n.ok()) return bad(c.ok() ? n.status() : c.status());
        chunk = static_cast<int>(*c);
        nchunks = static_cast<int>(*n);
      }
      ModelTensorInfo* t = nullptr;
      if (chunk == 0) {
        if (impl.by_name.count(*name)) {
          return impl.Err(StatusCode::kDuplicateName, "tensor '" + *name + "' appears twice");
        }
        impl.by_name[*name] = impl.tensors.size();
        t = &impl.tensors.emplace_back();
        t->name = *name;
        Status st = ParseShape(row, *t);
        if (st.ok()) {
          auto dt = row.Str(col::kDType);
          st = dt.ok() ? Status::OK() : dt.status();
          if (st.ok()) t->source_dtype = *dt;
        }
        if (st.ok()) st = impl.legacy ? ParseSeedRow(impl, row, *t) : ParseArrowQuantRow(row, *t);
        if (!st.ok()) return bad(st);
      } else {
        const auto it = impl.by_name.find(*name);
        if (it == impl.by_name.end() ||
            impl.tensors[it->second].rows.size() != static_cast<size_t>(chunk)) {
          return impl.Err(StatusCode::kCorrupt, "tensor '" + *name + "': chunk " +
                                                    std::to_string(chunk) + " out of order");
        }
        t = &impl.tensors[it->second];
      }
      t->rows.emplace_back(rg, i);
      expected_chunks[*name] = nchunks;
    }
    base += rows_in_group;
  }
  for (const auto& t : impl.tensors) {
    if (t.rows.size() != static_cast<size_t>(expected_chunks[t.name])) {
      return impl.Err(StatusCode::kCorrupt, "tensor '" + t.name + "' has " +
                                                std::to_string(t.rows.size()) + " of its " +
                                                std::to_string(expected_chunks[t.name]) + " rows");
    }
  }
  return Status::OK();
}

}  // namespace

Result<std::unique_ptr<ModelReader::Impl>> OpenModelFile(const std::string& file,
                                                         const ModelReaderOptions& options) {
  auto impl = std::make_unique<ModelReader::Impl>();
  impl->path = file;
  std::unique_ptr<parquet::arrow::FileReader> reader;
  AQ_RETURN_IF_ERROR(OpenFile(*impl, options, reader));
  std::shared_ptr<arrow::Schema> schema;
  AQ_RETURN_IF_ERROR(FromArrow(reader->GetSchema(&schema), impl->path, StatusCode::kFormatInvalid));
  AQ_RETURN_IF_ERROR(CheckSchema(*impl, *schema));
  AQ_RETURN_IF_ERROR(CheckRowCounts(*impl, options));
  AQ_ASSIGN_OR_RETURN(auto light, ReadLightColumns(*impl, *reader));
  AQ_RETURN_IF_ERROR(ParseRows(*impl, light.first, light.second));
  impl->Return(std::move(reader));  // the first pooled reader
  return impl;
}

Result<std::unique_ptr<ModelReader>> ModelReader::Open(const std::string& path,
                                                       const ModelReaderOptions& options) {
  AQ_ASSIGN_OR_RETURN(std::string resolved, ResolveModelPath(path));
  std::error_code ec;
  std::unique_ptr<Impl> impl;
  if (std::filesystem::is_directory(resolved, ec)) {
    AQ_ASSIGN_OR_RETURN(impl, OpenModelDataset(resolved, options));
  } else {
    AQ_ASSIGN_OR_RETURN(impl, OpenModelFile(resolved, options));
  }
  return std::unique_ptr<ModelReader>(new ModelReader(std::move(impl)));
}

}  // namespace arrowquant
