// Reading tensors out of an opened model file (model_reader_open.cc opens it): packed payload
// through Parquet's column reader, dequantization, and many tensors at once into caller buffers.
#include <parquet/column_reader.h>
#include <parquet/file_reader.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "arrowquant/calibration.h"
#include "arrowquant/model_file.h"
#include "core/parallel.h"
#include "formats/parquet/model_schema.h"
#include "formats/parquet/reader_impl.h"

namespace arrowquant {

using pq::FromArrow;
namespace col = pq::col;

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
  AQ_RETURN_IF_ERROR(
      FromArrow(builder.Open(file, props, footer), path, StatusCode::kFormatInvalid));
  parquet::ArrowReaderProperties aprops;
  aprops.set_use_threads(false);
  std::unique_ptr<parquet::arrow::FileReader> r;
  AQ_RETURN_IF_ERROR(
      FromArrow(builder.properties(aprops)->Build(&r), path, StatusCode::kFormatInvalid));
  return r;
}

void ModelReader::Impl::Return(std::unique_ptr<parquet::arrow::FileReader> r) const {
  std::lock_guard lk(pool_mu);
  idle.push_back(std::move(r));
}

// Payload bytes come through Parquet's column reader, which hands out pointers into the page
// (a slice of the memory map for uncompressed pages): one copy, into `out`, instead of the
// Arrow array in between. The low-level reader reports damage by throwing; it is caught here.
Status ModelReader::Impl::ReadPayload(const ModelTensorInfo& t, const char* column,
                                      std::vector<uint8_t>& out) const {
  if (!files.empty()) return Holder(t).ReadPayload(t, column, out);
  out.clear();
  const auto it = columns.find(column);
  if (it == columns.end()) {
    return Err(StatusCode::kFormatInvalid, std::string("no column '") + column + "'");
  }
  AQ_ASSIGN_OR_RETURN(std::unique_ptr<parquet::arrow::FileReader> r, Borrow());
  Status st;
  try {
    for (const auto& [rg, idx] : t.rows) {
      auto chunk = r->parquet_reader()->RowGroup(rg)->Column(it->second);
      if (chunk->type() != parquet::Type::BYTE_ARRAY) {
        st = Err(StatusCode::kFormatInvalid, std::string("column ") + column + " is not binary");
        break;
      }
      auto* bytes = static_cast<parquet::ByteArrayReader*>(chunk.get());
      if (idx > 0 && bytes->Skip(idx) != idx) {
        st = Err(StatusCode::kCorrupt,
                 "tensor '" + t.name + "': row " + std::to_string(idx) + " missing");
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

Status ModelReader::Impl::ReadQuantizedInto(const ModelTensorInfo& t, QuantizedTensor& q) const {
  if (!t.spec) {
    return Err(StatusCode::kInvalidArgument,
               "tensor '" + t.name + "' is " + t.quant_type + ", not an ArrowQuant-packed tensor");
  }
  q.spec = *t.spec;
  q.shape = t.shape;
  q.rows = t.shape.size() >= 2 ? t.shape[0] : 1;
  q.cols = q.rows ? t.num_params / q.rows : 0;
  q.source_dtype = DTypeFromSafeTensorsName(t.source_dtype).value_or(DType::kF32);
  const char* cols[4] = {col::kData, col::kScales, col::kZeros, col::kSuper};
  std::vector<uint8_t>* bufs[4] = {&q.codes, &q.scales, &q.zeros, &q.super_scales};
  for (int k = 0; k < 4; ++k) AQ_RETURN_IF_ERROR(ReadPayload(t, cols[k], *bufs[k]));
  const Status st = q.Validate();
  if (!st.ok()) return Err(StatusCode::kCorrupt, "tensor '" + t.name + "': " + st.message());
  return Status::OK();
}

// Seed rows: one code per byte, w = (code - zero_point[g]) * scale[g] over groups of group_size
// consecutive elements (docs/format.md, "Seed schema").
Status ModelReader::Impl::DecodeSeedRow(const ModelTensorInfo& t, std::vector<float>& out) const {
  std::vector<uint8_t> codes;
  AQ_RETURN_IF_ERROR(ReadPayload(t, col::kData, codes));
  const SeedParams& p = seed_params.at(t.name);
  const size_t n = t.num_params;
  const size_t g = p.group_size <= 0 ? std::max<size_t>(n, 1) : static_cast<size_t>(p.group_size);
  const size_t groups = n == 0 ? 0 : (n + g - 1) / g;
  if (codes.size() != n || p.scales.size() != groups || p.zeros.size() != groups) {
    return Err(StatusCode::kCorrupt,
               "tensor '" + t.name + "': seed data has " + std::to_string(codes.size()) +
                   " codes and " + std::to_string(p.scales.size()) + " scales for " +
                   std::to_string(n) + " values in groups of " + std::to_string(g));
  }
  out.resize(n);
  for (size_t i = 0; i < n; ++i) {
    out[i] = (static_cast<float>(codes[i]) - p.zeros[i / g]) * p.scales[i / g];
  }
  return Status::OK();
}

Status ModelReader::Impl::ReadRawBytes(const ModelTensorInfo& t, std::vector<uint8_t>& out) const {
  AQ_RETURN_IF_ERROR(ReadPayload(t, col::kData, out));
  const size_t need = t.num_params * ElementBytes(t.raw_dtype);
  if (out.size() != need) {
    return Err(StatusCode::kCorrupt, "tensor '" + t.name + "': " + std::to_string(out.size()) +
                                         " bytes, shape and dtype need " + std::to_string(need));
  }
  return Status::OK();
}

Status ModelReader::Impl::DecodeRawFloat(const ModelTensorInfo& t, std::vector<float>& out) const {
  std::vector<uint8_t> raw;
  AQ_RETURN_IF_ERROR(ReadRawBytes(t, raw));
  const size_t n = t.num_params;
  out.resize(n);
  if (t.raw_dtype == DType::kF32) {
    std::memcpy(out.data(), raw.data(), raw.size());
    return Status::OK();
  }
  std::vector<uint16_t> h(n);
  std::memcpy(h.data(), raw.data(), raw.size());
  if (t.raw_dtype == DType::kF16)
    F16ToF32(h, out);
  else
    BF16ToF32(h, out);
  return Status::OK();
}

ModelReader::ModelReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ModelReader::~ModelReader() = default;
const std::string& ModelReader::path() const {
  return impl_->path;
}
std::vector<std::string> ModelReader::files() const {
  if (impl_->files.empty()) return {impl_->path};
  std::vector<std::string> out;
  for (const auto& f : impl_->files) out.push_back(f->path);
  return out;
}
bool ModelReader::legacy() const {
  return impl_->legacy;
}
const std::map<std::string, std::string>& ModelReader::metadata() const {
  return impl_->metadata;
}
const std::vector<ModelTensorInfo>& ModelReader::tensors() const {
  return impl_->tensors;
}
const ModelTensorInfo* ModelReader::Find(const std::string& name) const {
  const auto it = impl_->by_name.find(name);
  return it == impl_->by_name.end() ? nullptr : &impl_->tensors[it->second];
}

Result<QuantizedTensor> ModelReader::ReadQuantized(const std::string& name) const {
  const ModelTensorInfo* t = Find(name);
  if (!t) return impl_->Err(StatusCode::kNotFound, "no tensor named '" + name + "'");
  QuantizedTensor q;
  AQ_RETURN_IF_ERROR(impl_->ReadQuantizedInto(*t, q));
  return q;
}

Status ModelReader::ReadQuantizedInto(const std::string& name, QuantizedTensor& q) const {
  const ModelTensorInfo* t = Find(name);
  if (!t) return impl_->Err(StatusCode::kNotFound, "no tensor named '" + name + "'");
  return impl_->ReadQuantizedInto(*t, q);
}

Result<std::vector<std::byte>> ModelReader::ReadRaw(const std::string& name) const {
  const ModelTensorInfo* t = Find(name);
  if (!t) return impl_->Err(StatusCode::kNotFound, "no tensor named '" + name + "'");
  if (t->quant_type != "raw") {
    return impl_->Err(StatusCode::kInvalidArgument,
                      "tensor '" + name + "' is quantized (" + t->quant_type + ")");
  }
  std::vector<uint8_t> b;
  AQ_RETURN_IF_ERROR(impl_->ReadRawBytes(*t, b));
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
  if (dtype == DType::kF16)
    F32ToF16(f32, h);
  else
    F32ToBF16(f32, h);
  std::memcpy(out.data(), h.data(), h.size() * 2);
}

Status ModelReader::Dequantize(const std::string& name, DType dtype, std::span<std::byte> out,
                               int threads) const {
  const ModelTensorInfo* t = Find(name);
  if (!t || !t->spatial || t->spatial->equalization_scales.empty() ||
      out.size() != t->num_params * ElementBytes(dtype)) {
    return DequantizeAsStored(name, dtype, out, threads);  // it reports any error
  }
  std::vector<float> w(t->num_params);
  AQ_RETURN_IF_ERROR(
      DequantizeAsStored(name, DType::kF32, std::as_writable_bytes(std::span<float>(w)), threads));
  const Status st =
      ScaleInputChannels(w, t->shape, t->spatial->equalization_scales, Equalize::kMultiply, name);
  if (!st.ok()) return impl_->Err(StatusCode::kCorrupt, st.message());
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
    return impl_->Err(StatusCode::kUnsupported,
                      "tensor '" + name + "' is " +
                          std::string(Traits(t->raw_dtype).safetensors_name) +
                          "; read it with ReadRaw");
  }
  const size_t n = t->num_params, es = ElementBytes(dtype);
  if (out.size() != n * es) {
    return impl_->Err(StatusCode::kSizeMismatch, "tensor '" + name + "': output has " +
                                                     std::to_string(out.size()) + " bytes, need " +
                                                     std::to_string(n * es));
  }
  if (t->spec) {
    // Per-thread scratch: loading a model dequantizes hundreds of tensors in a row, and fresh
    // buffers for each would be paid for in page faults.
    thread_local QuantizedTensor scratch;
    AQ_RETURN_IF_ERROR(impl_->ReadQuantizedInto(*t, scratch));
    return arrowquant::Dequantize(scratch, dtype, out, QuantOptions{threads});
  }
  if (t->quant_type == "raw" && t->raw_dtype == dtype) {
    std::vector<uint8_t> raw;
    AQ_RETURN_IF_ERROR(impl_->ReadRawBytes(*t, raw));
    std::memcpy(out.data(), raw.data(), raw.size());
    return Status::OK();
  }
  std::vector<float> f32;
  AQ_RETURN_IF_ERROR(t->quant_type == "raw" ? impl_->DecodeRawFloat(*t, f32)
                                            : impl_->DecodeSeedRow(*t, f32));
  StoreF32(f32, dtype, out);
  return Status::OK();
}

Status ModelReader::Load(std::span<const LoadRequest> requests, int threads, bool as_stored) const {
  std::vector<const ModelTensorInfo*> infos(requests.size());
  for (size_t i = 0; i < requests.size(); ++i) {
    const LoadRequest& r = requests[i];
    const ModelTensorInfo* t = Find(r.name);
    if (!t) return impl_->Err(StatusCode::kNotFound, "no tensor named '" + r.name + "'");
    // Integer, bool, f64 and f8 tensors are copied in their stored dtype.
    const bool copy = t->quant_type == "raw" && !Traits(t->raw_dtype).quantizable;
    if (copy && r.dtype != t->raw_dtype) {
      return impl_->Err(StatusCode::kInvalidArgument,
                        "tensor '" + r.name + "' is " +
                            std::string(Traits(t->raw_dtype).safetensors_name) +
                            " and loads only as such");
    }
    if (r.out.size() != t->num_params * ElementBytes(r.dtype)) {
      return impl_->Err(StatusCode::kSizeMismatch,
                        "tensor '" + r.name + "': destination has " + std::to_string(r.out.size()) +
                            " bytes, need " +
                            std::to_string(t->num_params * ElementBytes(r.dtype)));
    }
    infos[i] = t;
  }
  // Largest first, so that no worker is left with a big tensor at the end.
  std::vector<size_t> order(requests.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return requests[a].out.size() > requests[b].out.size();
  });
  std::vector<Status> errors(requests.size());
  ParallelForEach(order.size(), threads, [&](size_t k) {
    const size_t i = order[k];
    const LoadRequest& r = requests[i];
    if (infos[i]->quant_type == "raw" && !Traits(infos[i]->raw_dtype).quantizable) {
      std::vector<uint8_t> raw;  // copied as stored (sizes checked above and here)
      errors[i] = impl_->ReadRawBytes(*infos[i], raw);
      if (errors[i].ok()) std::memcpy(r.out.data(), raw.data(), raw.size());
      return;
    }
    errors[i] = as_stored ? DequantizeAsStored(r.name, r.dtype, r.out, 1)
                          : Dequantize(r.name, r.dtype, r.out, 1);
  });
  for (auto& e : errors) {
    if (!e.ok()) return e;
  }
  return Status::OK();
}

}  // namespace arrowquant
