// QuantSpec <-> its field strings: the one parser and printer (model files, bindings, reports).
#include <string>
#include <string_view>

#include "arrowquant/quantize.h"

namespace arrowquant {

std::string_view SchemeName(Scheme s) {
  return s == Scheme::kSymmetric ? "sym" : "asym";
}

std::string_view GridName(Grid g) {
  return g == Grid::kSearch ? "search" : "minmax";
}

std::string ScaleDTypeName(const QuantSpec& s) {
  switch (s.scales) {
    case ScaleStorage::kF16: return "f16";
    case ScaleStorage::kF32: return "f32";
    case ScaleStorage::kCoded: return "q" + std::to_string(s.scale_bits);
  }
  return "?";
}

std::string QuantSpec::ToString() const {
  std::string s = "int" + std::to_string(bits);
  s += "-";
  s += SchemeName(scheme);
  s += group_size == 0 ? "-channel" : "-g" + std::to_string(group_size);
  s += "-" + ScaleDTypeName(*this) + "-";
  s += GridName(grid);
  return s;
}

Result<QuantSpec> QuantSpec::FromFields(int bits, int group_size, std::string_view scheme,
                                        std::string_view method, std::string_view scale_dtype) {
  QuantSpec s;
  s.bits = bits;
  s.group_size = group_size;
  if (scheme == "asym") {
    s.scheme = Scheme::kAsymmetric;
  } else if (scheme == "sym") {
    s.scheme = Scheme::kSymmetric;
  } else {
    return Status(StatusCode::kInvalidArgument,
                  "scheme must be 'asym' or 'sym', got '" + std::string(scheme) + "'");
  }
  if (method == "search") {
    s.grid = Grid::kSearch;
  } else if (method == "minmax") {
    s.grid = Grid::kMinMax;
  } else {
    return Status(StatusCode::kInvalidArgument,
                  "method must be 'search' or 'minmax', got '" + std::string(method) + "'");
  }
  if (scale_dtype == "f16") {
    s.scales = ScaleStorage::kF16;
  } else if (scale_dtype == "f32") {
    s.scales = ScaleStorage::kF32;
  } else if (scale_dtype == "q6" || scale_dtype == "q7" || scale_dtype == "q8") {
    s.scales = ScaleStorage::kCoded;
    s.scale_bits = scale_dtype[1] - '0';
  } else {
    return Status(StatusCode::kInvalidArgument,
                  "scale_dtype must be 'f16', 'f32', 'q6', 'q7' or 'q8', got '" +
                      std::string(scale_dtype) + "'");
  }
  AQ_RETURN_IF_ERROR(s.Validate());
  return s;
}

}  // namespace arrowquant
