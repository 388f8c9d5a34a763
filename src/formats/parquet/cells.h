// Typed access to one cell of an Arrow column whose type another tool may have widened or
// narrowed (any integer width, float or double lists): a mistyped cell is an error, not a crash.
#pragma once

#include <arrow/api.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "arrowquant/status.h"

namespace arrowquant::pq {

Result<int64_t> IntCell(const std::shared_ptr<arrow::Array>& a, int64_t i);
Result<std::string> StrCell(const std::shared_ptr<arrow::Array>& a, int64_t i);
// A list cell's numbers converted to T; nullopt for a null cell. Integers are read as integers
// (a shape is never routed through a double).
template <typename T>
Result<std::optional<std::vector<T>>> ListCell(const std::shared_ptr<arrow::Array>& a, int64_t i) {
  using Out = std::optional<std::vector<T>>;
  if (!a) return Status(StatusCode::kFormatInvalid, "missing list column");
  if (a->IsNull(i)) return Out();
  if (a->type_id() != arrow::Type::LIST) {
    return Status(StatusCode::kFormatInvalid,
                  "expected a list column, found " + a->type()->ToString());
  }
  const auto values = static_cast<const arrow::ListArray&>(*a).value_slice(i);
  std::vector<T> out;
  out.reserve(static_cast<size_t>(values->length()));
  for (int64_t k = 0; k < values->length(); ++k) {
    switch (values->type_id()) {
      case arrow::Type::FLOAT:
        out.push_back(static_cast<T>(static_cast<const arrow::FloatArray&>(*values).Value(k)));
        break;
      case arrow::Type::DOUBLE:
        out.push_back(static_cast<T>(static_cast<const arrow::DoubleArray&>(*values).Value(k)));
        break;
      default: {
        AQ_ASSIGN_OR_RETURN(int64_t v, IntCell(values, k));
        out.push_back(static_cast<T>(v));
      }
    }
  }
  return Out(std::move(out));
}

}  // namespace arrowquant::pq
