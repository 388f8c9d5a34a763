// Quantize / Dequantize / MeasureError: rows in parallel, each row converted to f32, fitted
// (quant/group_fit), coded by the SIMD kernels and packed.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "arrowquant/quantize.h"
#include "core/parallel.h"
#include "kernels/pack.h"
#include "kernels/row_kernels.h"
#include "quant/error_sums.h"
#include "quant/group_fit.h"
#include "quant/inspect.h"
#include "quant/layout.h"

namespace arrowquant {
namespace quant {

void LoadRow(const QuantizedView& q, const Layout& l, uint64_t r, RowStored& st) {
  const Format f(q.spec);
  st.Resize(f, l.groups);
  const uint8_t* sc = q.scales.data() + r * l.scale_row_bytes;
  const uint8_t* zp = q.zeros.data() + r * l.zero_row_bytes;
  const bool asym = q.spec.scheme == Scheme::kAsymmetric;
  switch (q.spec.scales) {
    case ScaleStorage::kF16: std::memcpy(st.scale_f16.data(), sc, l.scale_row_bytes); break;
    case ScaleStorage::kF32: std::memcpy(st.scale_f32.data(), sc, l.scale_row_bytes); break;
    case ScaleStorage::kCoded: {
      kernels::UnpackCodes(sc, l.groups, q.spec.scale_bits, st.ls.data());
      const uint8_t* sp = q.super_scales.data() + r * l.super_row_bytes;
      std::memcpy(&st.d, sp, 2);
      if (asym) {
        kernels::UnpackCodes(zp, l.groups, q.spec.scale_bits, st.lm.data());
        std::memcpy(&st.dmin, sp + 2, 2);
      }
      return;
    }
  }
  if (asym) kernels::UnpackCodes(zp, l.groups, q.spec.bits, st.zero.data());
}

}  // namespace quant

namespace {

using quant::LoadRow;

using quant::CheckWeight;
using quant::Combine;
using quant::Format;
using quant::Layout;
using quant::MakeLayout;
using quant::RowParams;
using quant::RowsCols;
using quant::RowStored;
using quant::RowSums;
using quant::StoreRow;
using quant::SumsOf;

// Dequantizes row r into `out` (cols values of `dtype`, F32/F16/BF16; may be unaligned).
void DequantizeRow(const QuantizedView& q, const Layout& l, uint64_t r, RowStored& st, RowParams& p,
                   DType dtype, void* out) {
  LoadRow(q, l, r, st);
  quant::DecodeRow(Format(q.spec), st, l.groups, p);
  kernels::DequantizePacked(q.codes.data() + r * l.code_row_bytes, q.spec.bits, l.cols, l.g,
                            p.scale.data(), p.offset.data(), dtype, out);
}

}  // namespace

namespace quant {

Status CheckWeight(const TensorView& w) {
  const std::string name(w.name);
  if (!Traits(w.dtype).quantizable) {
    return Status(StatusCode::kUnsupported, "tensor '" + name + "': dtype " +
                                                std::string(Traits(w.dtype).safetensors_name) +
                                                " is not quantized (F32, F16 and BF16 are)");
  }
  if (w.shape.empty()) {
    return Status(StatusCode::kInvalidArgument,
                  "tensor '" + name + "': a scalar cannot be quantized");
  }
  uint64_t n = 1;
  for (uint64_t d : w.shape) {
    if (__builtin_mul_overflow(n, d, &n)) {
      return Status(StatusCode::kShapeOverflow, "tensor '" + name + "': shape overflows");
    }
  }
  if (n * ElementBytes(w.dtype) != w.data.size()) {
    return Status(StatusCode::kSizeMismatch, "tensor '" + name + "': shape needs " +
                                                 std::to_string(n * ElementBytes(w.dtype)) +
                                                 " bytes, got " + std::to_string(w.data.size()));
  }
  return Status::OK();
}

Status NonFiniteStatus(std::string_view name, const std::vector<uint64_t>& bad) {
  uint64_t total = 0;
  for (uint64_t b : bad) total += b;
  if (total == 0) return Status::OK();
  return Status(StatusCode::kNonFinite, "tensor '" + std::string(name) +
                                            "': " + std::to_string(total) +
                                            " NaN or Inf values; such tensors are not quantized");
}

void RowsCols(const std::vector<uint64_t>& shape, uint64_t* rows, uint64_t* cols) {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  *rows = shape.size() >= 2 ? shape[0] : 1;
  *cols = *rows ? n / *rows : 0;
}

}  // namespace quant

Status QuantSpec::Validate() const {
  if (!IsWeightWidth(bits)) {
    return Status(StatusCode::kInvalidArgument,
                  "bits must be 2, 3, 4 or 8, got " + std::to_string(bits));
  }
  if (group_size != 0 && group_size != 32 && group_size != 64 && group_size != 128 &&
      group_size != 256) {
    return Status(StatusCode::kInvalidArgument,
                  "group_size must be 32, 64, 128, 256 or 0 (per channel), got " +
                      std::to_string(group_size));
  }
  if (scales == ScaleStorage::kCoded && (scale_bits < 6 || scale_bits > 8)) {
    return Status(StatusCode::kInvalidArgument,
                  "scale codes must be 6, 7 or 8 bits, got " + std::to_string(scale_bits));
  }
  return Status::OK();
}

QuantSpec QuantSpec::Recommended(int bits) {
  QuantSpec s;
  s.bits = bits;
  s.group_size = 32;
  s.scheme = Scheme::kAsymmetric;
  s.grid = Grid::kSearch;
  s.scales = ScaleStorage::kCoded;
  // bench/quality.py: 7-bit scale codes put INT4 below GGUF Q4_K's error at fewer bits;
  // at 2 and 8 bits the code error dominates and 6 bits suffice.
  s.scale_bits = bits == 4 ? 7 : 6;
  return s;
}

uint64_t QuantizedTensor::groups_per_row() const {
  return MakeLayout(*this).groups;
}

uint64_t QuantizedTensor::bytes_per_row() const {
  const Layout l = MakeLayout(*this);
  return l.code_row_bytes + l.scale_row_bytes + l.zero_row_bytes + l.super_row_bytes;
}

QuantizedView QuantizedTensor::View() const {
  return QuantizedView{spec, rows, cols, codes, scales, zeros, super_scales};
}

Status QuantizedView::Validate() const {
  AQ_RETURN_IF_ERROR(spec.Validate());
  const Layout l = MakeLayout(spec, rows, cols);
  auto check = [&](std::span<const uint8_t> b, size_t per_row, const char* what) {
    uint64_t need = 0;
    if (__builtin_mul_overflow(l.rows, per_row, &need) || b.size() != need) {
      return Status(StatusCode::kCorrupt, std::string(what) + " hold " + std::to_string(b.size()) +
                                              " bytes; shape and format " + spec.ToString() +
                                              " need " + std::to_string(need));
    }
    return Status::OK();
  };
  AQ_RETURN_IF_ERROR(check(codes, l.code_row_bytes, "codes"));
  AQ_RETURN_IF_ERROR(check(scales, l.scale_row_bytes, "scales"));
  AQ_RETURN_IF_ERROR(check(zeros, l.zero_row_bytes, "zero-points"));
  return check(super_scales, l.super_row_bytes, "super-scales");
}

Status QuantizedTensor::Validate() const {
  AQ_RETURN_IF_ERROR(spec.Validate());
  uint64_t n = 1;
  for (uint64_t d : shape) {
    if (__builtin_mul_overflow(n, d, &n))
      return Status(StatusCode::kShapeOverflow, "shape overflows");
  }
  uint64_t r = 0, c = 0;
  RowsCols(shape, &r, &c);
  if (shape.empty() || r != rows || c != cols) {
    return Status(StatusCode::kCorrupt, "rows/cols do not match the shape");
  }
  return View().Validate();
}
uint64_t QuantizedTensor::group_len() const {
  return MakeLayout(*this).g;
}

namespace {

// Quantize(), and with `sums` each row's error sums against its own dequantized values (the
// values DequantizeRow gives: the same codes and decoded parameters, the same arithmetic).
Result<QuantizedTensor> QuantizeImpl(const TensorView& w, const QuantSpec& spec,
                                     const QuantOptions& options, std::vector<RowSums>* sums) {
  AQ_RETURN_IF_ERROR(spec.Validate());
  AQ_RETURN_IF_ERROR(CheckWeight(w));
  QuantizedTensor q;
  q.spec = spec;
  q.source_dtype = w.dtype;
  q.shape = w.shape;
  RowsCols(w.shape, &q.rows, &q.cols);
  const Layout l = MakeLayout(spec, q.rows, q.cols);
  q.codes.assign(l.rows * l.code_row_bytes, 0);
  q.scales.assign(l.rows * l.scale_row_bytes, 0);
  q.zeros.assign(l.rows * l.zero_row_bytes, 0);
  q.super_scales.assign(l.rows * l.super_row_bytes, 0);
  if (l.cols == 0 || l.rows == 0) return q;

  const Format f(spec);
  const size_t esize = ElementBytes(w.dtype);
  std::vector<uint64_t> bad(l.rows, 0);
  std::vector<uint8_t> overflow(l.rows, 0);
  if (sums) sums->assign(l.rows, RowSums{});
  ParallelFor(l.rows, options.threads, [&](size_t begin, size_t end, int) {
    std::vector<float> x(l.cols), y(sums ? l.cols : 0);
    std::vector<uint8_t> codes(l.cols);
    RowStored st;
    RowParams p;
    for (size_t r = begin; r < end; ++r) {
      kernels::ToF32(w.dtype, w.data.data() + r * l.cols * esize, l.cols, x.data());
      const uint64_t nonfinite = kernels::CountNonFinite(x.data(), l.cols);
      if (nonfinite) {
        bad[r] = nonfinite;
        continue;
      }
      if (!quant::FitRow(f, x.data(), l.cols, l.g, st, p)) overflow[r] = 1;
      kernels::QuantizeGroups(x.data(), l.cols, l.g, p.inv_scale.data(), p.offset.data(), f.qmax,
                              codes.data());
      kernels::PackCodes(codes.data(), l.cols, spec.bits, q.codes.data() + r * l.code_row_bytes);
      StoreRow(spec, l, st, r, q);
      if (sums) {
        kernels::DequantizeGroups(codes.data(), l.cols, l.g, p.scale.data(), p.offset.data(),
                                  y.data());
        (*sums)[r] = SumsOf(x.data(), y.data(), l.cols);
      }
    }
  });
  AQ_RETURN_IF_ERROR(quant::NonFiniteStatus(w.name, bad));
  if (std::find(overflow.begin(), overflow.end(), 1) != overflow.end()) {
    return Status(StatusCode::kScaleOverflow,
                  "tensor '" + std::string(w.name) +
                      "': values too large for f16 scales; use f32 scale storage");
  }
  return q;
}

}  // namespace

Result<QuantizedTensor> Quantize(const TensorView& w, const QuantSpec& spec,
                                 const QuantOptions& options) {
  return QuantizeImpl(w, spec, options, nullptr);
}

Result<MeasuredTensor> QuantizeMeasured(const TensorView& w, const QuantSpec& spec,
                                        const QuantOptions& options) {
  std::vector<RowSums> sums;
  AQ_ASSIGN_OR_RETURN(QuantizedTensor q, QuantizeImpl(w, spec, options, &sums));
  const uint64_t count = q.rows * q.cols;
  return MeasuredTensor{std::move(q), Combine(sums, count)};
}

Status DequantizeRows(const QuantizedView& q, uint64_t begin, uint64_t end, DType dtype,
                      std::span<std::byte> out, const QuantOptions& options) {
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return Status(StatusCode::kInvalidArgument, "dequantize to F32, F16 or BF16 only");
  }
  AQ_RETURN_IF_ERROR(q.Validate());
  if (begin > end || end > q.rows) {
    return Status(StatusCode::kInvalidArgument,
                  "dequantize: rows [" + std::to_string(begin) + ", " + std::to_string(end) +
                      ") outside the tensor's " + std::to_string(q.rows));
  }
  const Layout l = MakeLayout(q.spec, q.rows, q.cols);
  const size_t esize = ElementBytes(dtype);
  if (out.size() != (end - begin) * l.cols * esize) {
    return Status(StatusCode::kSizeMismatch, "dequantize: output buffer has " +
                                                 std::to_string(out.size()) + " bytes, need " +
                                                 std::to_string((end - begin) * l.cols * esize));
  }
  ParallelFor(end - begin, options.threads, [&](size_t b, size_t e, int) {
    RowStored st;
    RowParams p;
    for (size_t i = b; i < e; ++i) {
      DequantizeRow(q, l, begin + i, st, p, dtype, out.data() + i * l.cols * esize);
    }
  });
  return Status::OK();
}

Status Dequantize(const QuantizedTensor& q, DType dtype, std::span<std::byte> out,
                  const QuantOptions& options) {
  AQ_RETURN_IF_ERROR(q.Validate());
  return DequantizeRows(q.View(), 0, q.rows, dtype, out, options);
}

Result<ErrorMetrics> MeasureError(const QuantizedTensor& q, const TensorView& w,
                                  const QuantOptions& options) {
  AQ_RETURN_IF_ERROR(CheckWeight(w));
  if (w.shape != q.shape) {
    return Status(StatusCode::kSizeMismatch,
                  "tensor '" + std::string(w.name) + "': shape differs from the quantized tensor");
  }
  const Layout l = MakeLayout(q);
  std::vector<RowSums> sums(l.rows);
  const size_t esize = ElementBytes(w.dtype);
  const QuantizedView v = q.View();
  ParallelFor(l.rows, options.threads, [&](size_t begin, size_t end, int) {
    std::vector<float> x(l.cols), y(l.cols);
    RowStored st;
    RowParams p;
    for (size_t r = begin; r < end; ++r) {
      kernels::ToF32(w.dtype, w.data.data() + r * l.cols * esize, l.cols, x.data());
      DequantizeRow(v, l, r, st, p, DType::kF32, y.data());
      sums[r] = SumsOf(x.data(), y.data(), l.cols);
    }
  });
  return Combine(sums, l.rows * l.cols);
}

}  // namespace arrowquant

namespace arrowquant::quant {

Decoded DecodeAll(const QuantizedTensor& q) {
  const Layout l = MakeLayout(q);
  Decoded d;
  d.scale.resize(l.rows * l.groups);
  d.offset.resize(l.rows * l.groups);
  d.codes.resize(l.rows * l.cols);
  RowStored st;
  RowParams p;
  const QuantizedView v = q.View();
  for (uint64_t r = 0; r < l.rows; ++r) {
    LoadRow(v, l, r, st);
    DecodeRow(Format(q.spec), st, l.groups, p);
    std::copy(p.scale.begin(), p.scale.end(), d.scale.begin() + r * l.groups);
    std::copy(p.offset.begin(), p.offset.end(), d.offset.begin() + r * l.groups);
    kernels::UnpackCodes(q.codes.data() + r * l.code_row_bytes, l.cols, q.spec.bits,
                         d.codes.data() + r * l.cols);
  }
  return d;
}

void DecodeRowOf(const QuantizedView& q, uint64_t r, float* scale, float* offset, uint8_t* codes) {
  const Layout l = MakeLayout(q.spec, q.rows, q.cols);
  RowStored st;
  RowParams p;
  LoadRow(q, l, r, st);
  DecodeRow(Format(q.spec), st, l.groups, p);
  std::copy(p.scale.begin(), p.scale.begin() + l.groups, scale);
  std::copy(p.offset.begin(), p.offset.begin() + l.groups, offset);
  kernels::UnpackCodes(q.codes.data() + r * l.code_row_bytes, l.cols, q.spec.bits, codes);
}

}  // namespace arrowquant::quant
