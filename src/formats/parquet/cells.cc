#include "formats/parquet/cells.h"

namespace arrowquant::pq {

Result<int64_t> IntCell(const std::shared_ptr<arrow::Array>& a, int64_t i) {
  if (!a) return Status(StatusCode::kFormatInvalid, "missing integer column");
  switch (a->type_id()) {
    case arrow::Type::INT8: return static_cast<const arrow::Int8Array&>(*a).Value(i);
    case arrow::Type::INT16: return static_cast<const arrow::Int16Array&>(*a).Value(i);
    case arrow::Type::INT32: return static_cast<const arrow::Int32Array&>(*a).Value(i);
    case arrow::Type::INT64: return static_cast<const arrow::Int64Array&>(*a).Value(i);
    case arrow::Type::UINT8: return static_cast<const arrow::UInt8Array&>(*a).Value(i);
    case arrow::Type::UINT16: return static_cast<const arrow::UInt16Array&>(*a).Value(i);
    case arrow::Type::UINT32: return static_cast<const arrow::UInt32Array&>(*a).Value(i);
    case arrow::Type::UINT64:
      return static_cast<int64_t>(static_cast<const arrow::UInt64Array&>(*a).Value(i));
    default:
      return Status(StatusCode::kFormatInvalid,
                    "expected an integer column, found " + a->type()->ToString());
  }
}

Result<std::string> StrCell(const std::shared_ptr<arrow::Array>& a, int64_t i) {
  if (!a) return Status(StatusCode::kFormatInvalid, "missing string column");
  if (a->type_id() == arrow::Type::STRING) {
    return static_cast<const arrow::StringArray&>(*a).GetString(i);
  }
  if (a->type_id() == arrow::Type::LARGE_STRING) {
    return static_cast<const arrow::LargeStringArray&>(*a).GetString(i);
  }
  return Status(StatusCode::kFormatInvalid,
                "expected a string column, found " + a->type()->ToString());
}

}  // namespace arrowquant::pq
