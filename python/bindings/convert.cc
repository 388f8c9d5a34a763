#include "convert.h"

#include <nanobind/stl/string.h>

#include "status_error.h"

namespace nb = nanobind;

namespace arrowquant::py {

nb::dlpack::dtype NumpyStorage(DType d) {
  switch (d) {
    case DType::kF64: return nb::dtype<double>();
    case DType::kF32: return nb::dtype<float>();
    case DType::kF16: return {static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1};
    case DType::kI64: return nb::dtype<int64_t>();
    case DType::kI32: return nb::dtype<int32_t>();
    case DType::kI16: return nb::dtype<int16_t>();
    case DType::kI8: return nb::dtype<int8_t>();
    case DType::kU64: return nb::dtype<uint64_t>();
    case DType::kU32: return nb::dtype<uint32_t>();
    case DType::kBool: return nb::dtype<bool>();
    case DType::kBF16:
    case DType::kU16: return nb::dtype<uint16_t>();
    case DType::kU8:
    case DType::kF8E4M3:
    case DType::kF8E5M2: return nb::dtype<uint8_t>();
  }
  return nb::dtype<uint8_t>();
}

DType ParseDType(const std::string& s) {
  if (auto d = DTypeFromName(s)) return *d;
  throw StatusError(Status(StatusCode::kInvalidArgument, "unknown dtype '" + s + "'"));
}

nb::dict MetricsDict(const ErrorMetrics& e) {
  nb::dict d;
  d["mse"] = e.mse;
  d["rel_rmse"] = e.rel_rmse;
  d["sqnr_db"] = e.sqnr_db;
  d["cosine"] = e.cosine;
  d["max_abs"] = e.max_abs;
  d["count"] = e.count;
  return d;
}

nb::dict SpecDict(const QuantSpec& s) {
  nb::dict d;
  d["bits"] = s.bits;
  d["group_size"] = s.group_size;
  d["scheme"] = std::string(SchemeName(s.scheme));
  d["method"] = std::string(GridName(s.grid));
  d["scale_dtype"] = ScaleDTypeName(s);
  d["format"] = s.ToString();
  return d;
}

QuantizedView PackedView(const Bytes1D& codes, const Bytes1D& scales, const Bytes1D& zeros,
                         const Bytes1D& super_scales, int bits, int group_size, int scheme,
                         int scale_storage, int scale_bits, uint64_t rows, uint64_t cols,
                         const char* what) {
  if (scheme < 0 || scheme > 1 || scale_storage < 0 || scale_storage > 2) {
    throw StatusError(Status(StatusCode::kInvalidArgument, std::string(what) + ": bad format"));
  }
  auto bytes = [](const Bytes1D& a) {
    return std::span<const uint8_t>(static_cast<const uint8_t*>(a.data()), a.size());
  };
  QuantizedView v;
  v.spec.bits = bits;
  v.spec.group_size = group_size;
  v.spec.scheme = static_cast<Scheme>(scheme);
  v.spec.scales = static_cast<ScaleStorage>(scale_storage);
  v.spec.scale_bits = scale_bits;
  v.rows = rows;
  v.cols = cols;
  v.codes = bytes(codes);
  v.scales = bytes(scales);
  v.zeros = bytes(zeros);
  v.super_scales = bytes(super_scales);
  return v;
}

}  // namespace arrowquant::py
