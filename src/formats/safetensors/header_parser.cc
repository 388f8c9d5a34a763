// SafeTensors header validation. The rules, in the order they are checked, mirror the reference
// implementation (huggingface/safetensors) and each failure has its own StatusCode:
//   file >= 8 bytes; header length <= limit and inside the file; UTF-8; JSON object starting
//   with '{'; no duplicate keys; entries {dtype, shape, data_offsets}; known dtype; checked
//   shape x element size == byte span; offsets contiguous from 0 in offset order; the data
//   section ends exactly where the last tensor ends.
#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "arrowquant/safetensors.h"
#include "core/utf8.h"

namespace arrowquant {
namespace {

using json = nlohmann::json;

Status Err(StatusCode code, std::string_view label, const std::string& msg) {
  return Status(code, std::string(label) + ": " + msg);
}

Status TensorErr(StatusCode code, std::string_view label, std::string_view name,
                 const std::string& msg) {
  return Status(code, std::string(label) + ": tensor '" + std::string(name) + "': " + msg);
}

uint64_t ReadLittleEndian64(const std::byte* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p[i]);
  return v;
}

Result<uint64_t> ParseUnsigned(const json& v) {
  if (!v.is_number_unsigned()) return Status(StatusCode::kHeaderInvalidEntry, "");
  return v.get<uint64_t>();
}

Result<TensorInfo> ParseEntry(std::string_view label, const std::string& name, const json& e) {
  auto bad = [&](const std::string& what) {
    return TensorErr(StatusCode::kHeaderInvalidEntry, label, name, what);
  };
  if (!e.is_object()) return bad("entry is not a JSON object");
  const auto dt = e.find("dtype");
  const auto sh = e.find("shape");
  const auto off = e.find("data_offsets");
  if (dt == e.end() || !dt->is_string()) return bad("missing or non-string 'dtype'");
  if (sh == e.end() || !sh->is_array()) return bad("missing or non-array 'shape'");
  if (off == e.end() || !off->is_array() || off->size() != 2) {
    return bad("'data_offsets' must be an array of two integers");
  }
  TensorInfo info;
  info.name = name;
  const auto dtype = DTypeFromSafeTensorsName(dt->get_ref<const std::string&>());
  if (!dtype) {
    return TensorErr(StatusCode::kUnknownDtype, label, name,
                     "unknown dtype '" + dt->get<std::string>() + "'");
  }
  info.dtype = *dtype;
  for (const auto& d : *sh) {
    auto dim = ParseUnsigned(d);
    if (!dim.ok()) return bad("shape entries must be non-negative integers");
    info.shape.push_back(*dim);
  }
  auto b = ParseUnsigned((*off)[0]);
  auto en = ParseUnsigned((*off)[1]);
  if (!b.ok() || !en.ok()) return bad("data_offsets must be non-negative integers");
  info.begin = *b;
  info.end = *en;
  return info;
}

Status CheckSize(std::string_view label, const TensorInfo& t) {
  uint64_t n = 1;
  for (uint64_t d : t.shape) {
    if (__builtin_mul_overflow(n, d, &n)) {
      return TensorErr(StatusCode::kShapeOverflow, label, t.name, "shape product overflows");
    }
  }
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(n, ElementBytes(t.dtype), &bytes)) {
    return TensorErr(StatusCode::kShapeOverflow, label, t.name, "byte size overflows");
  }
  if (t.end < t.begin) {
    return TensorErr(
        StatusCode::kOffsetsInvalid, label, t.name,
        "data_offsets end " + std::to_string(t.end) + " before begin " + std::to_string(t.begin));
  }
  if (t.end - t.begin != bytes) {
    return TensorErr(StatusCode::kSizeMismatch, label, t.name,
                     "shape and dtype need " + std::to_string(bytes) +
                         " bytes, data_offsets span " + std::to_string(t.end - t.begin));
  }
  return Status::OK();
}

}  // namespace

uint64_t TensorInfo::num_elements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;  // validated not to overflow at parse time
  return n;
}

Result<SafeTensorsHeader> ParseSafeTensors(std::span<const std::byte> file, std::string_view label,
                                           const ReaderLimits& limits) {
  if (file.size() < 8) {
    return Err(StatusCode::kFileTooSmall, label,
               "file is " + std::to_string(file.size()) +
                   " bytes, a SafeTensors file needs at "
                   "least 8");
  }
  const uint64_t n = ReadLittleEndian64(file.data());
  if (n > limits.max_header_bytes) {
    return Err(StatusCode::kHeaderTooLarge, label,
               "header claims " + std::to_string(n) + " bytes, limit is " +
                   std::to_string(limits.max_header_bytes));
  }
  if (n > file.size() - 8) {
    return Err(StatusCode::kHeaderOutOfBounds, label,
               "header claims " + std::to_string(n) + " bytes but only " +
                   std::to_string(file.size() - 8) + " follow the length prefix");
  }
  const std::string_view text(reinterpret_cast<const char*>(file.data()) + 8, n);
  if (!IsValidUtf8(text))
    return Err(StatusCode::kHeaderNotUtf8, label, "header is not valid UTF-8");
  if (text.empty() || text.front() != '{') {
    return Err(StatusCode::kHeaderInvalidJson, label, "header does not start with '{'");
  }

  std::set<std::string, std::less<>> seen;
  std::string duplicate;
  const json::parser_callback_t on_event = [&](int depth, json::parse_event_t ev, json& parsed) {
    if (ev == json::parse_event_t::key && depth == 1 && duplicate.empty()) {
      const auto& key = parsed.get_ref<const std::string&>();
      if (!seen.insert(key).second) duplicate = key;
    }
    return true;
  };
  const json root = json::parse(text.begin(), text.end(), on_event, /*allow_exceptions=*/false);
  if (root.is_discarded())
    return Err(StatusCode::kHeaderInvalidJson, label, "header is not valid JSON");
  if (!root.is_object())
    return Err(StatusCode::kHeaderInvalidJson, label, "header is not a JSON object");
  if (!duplicate.empty()) {
    return TensorErr(StatusCode::kDuplicateName, label, duplicate, "name appears twice in header");
  }

  SafeTensorsHeader header;
  header.header_bytes = n;
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (value.is_null()) continue;
      if (!value.is_object()) {
        return Err(StatusCode::kMetadataInvalid, label, "__metadata__ is not an object");
      }
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) {
          return Err(StatusCode::kMetadataInvalid, label,
                     "__metadata__ value for '" + mk + "' is not a string");
        }
        header.metadata.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    if (header.tensors.size() >= limits.max_tensors) {
      return Err(StatusCode::kLimitExceeded, label,
                 "more than " + std::to_string(limits.max_tensors) + " tensors");
    }
    AQ_ASSIGN_OR_RETURN(TensorInfo info, ParseEntry(label, key, value));
    AQ_RETURN_IF_ERROR(CheckSize(label, info));
    if (info.nbytes() > limits.max_tensor_bytes) {
      return TensorErr(StatusCode::kLimitExceeded, label, key,
                       std::to_string(info.nbytes()) + " bytes exceed the per-tensor limit of " +
                           std::to_string(limits.max_tensor_bytes));
    }
    header.tensors.push_back(std::move(info));
  }

  std::sort(header.tensors.begin(), header.tensors.end(), [](const auto& a, const auto& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const uint64_t data_size = file.size() - 8 - n;
  uint64_t cursor = 0;
  for (const auto& t : header.tensors) {
    if (t.begin != cursor) {
      return TensorErr(StatusCode::kOffsetsInvalid, label, t.name,
                       "data_offsets begin at " + std::to_string(t.begin) + ", expected " +
                           std::to_string(cursor) + (t.begin < cursor ? " (overlap)" : " (gap)"));
    }
    if (t.end > data_size) {
      return TensorErr(StatusCode::kDataOutOfBounds, label, t.name,
                       "ends at byte " + std::to_string(t.end) + " of a " +
                           std::to_string(data_size) + "-byte data section");
    }
    cursor = t.end;
  }
  if (cursor > limits.max_total_bytes) {
    return Err(StatusCode::kLimitExceeded, label,
               std::to_string(cursor) + " tensor bytes exceed the limit of " +
                   std::to_string(limits.max_total_bytes));
  }
  if (cursor != data_size) {
    return Err(StatusCode::kDataSizeMismatch, label,
               "data section is " + std::to_string(data_size) + " bytes but tensors cover " +
                   std::to_string(cursor));
  }
  return header;
}

}  // namespace arrowquant
