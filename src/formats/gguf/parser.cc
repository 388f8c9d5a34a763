// The GGUF container (ggml's docs/gguf.md): header, metadata, tensor infos, aligned data; every
// length and offset checked against the bytes before use, as strictly as ggml's own reader
// (gguf.cpp) and stricter where it only warns (duplicate names, overlapping tensors).
#include <algorithm>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <unordered_set>

#include "arrowquant/gguf.h"
#include "core/utf8.h"

namespace arrowquant {
namespace {

using json = nlohmann::json;

constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
constexpr int kMaxArrayDepth = 2;

enum ValueType : uint32_t {
  kU8 = 0,
  kI8,
  kU16,
  kI16,
  kU32,
  kI32,
  kF32,
  kBool,
  kString,
  kArray,
  kU64,
  kI64,
  kF64,
};

size_t ScalarBytes(uint32_t t) {
  switch (t) {
    case kU8:
    case kI8:
    case kBool: return 1;
    case kU16:
    case kI16: return 2;
    case kU32:
    case kI32:
    case kF32: return 4;
    case kU64:
    case kI64:
    case kF64: return 8;
    default: return 0;
  }
}

class Cursor {
 public:
  Cursor(std::span<const std::byte> b, std::string_view label, const GgufReaderLimits& limits)
      : b_(b), label_(label), limits_(limits) {}

  Status Fail(StatusCode code, const std::string& what) const {
    return Status(code,
                  std::string(label_) + ": " + what + " (at byte " + std::to_string(pos_) + ")");
  }
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return b_.size() - pos_; }

  template <class T>
  Status Read(T* v, const char* what) {
    if (left() < sizeof(T)) {
      return Fail(StatusCode::kCorrupt, std::string("file ends inside ") + what);
    }
    std::memcpy(v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::OK();
  }

  Status ReadString(std::string* s, const char* what) {
    uint64_t n = 0;
    AQ_RETURN_IF_ERROR(Read(&n, what));
    if (n > limits_.max_string_bytes) {
      return Fail(StatusCode::kLimitExceeded,
                  std::string(what) + " of " + std::to_string(n) + " bytes exceeds the limit");
    }
    if (n > left()) {
      return Fail(StatusCode::kCorrupt, std::string(what) + " of " + std::to_string(n) +
                                            " bytes runs past the end of the file");
    }
    s->assign(reinterpret_cast<const char*>(b_.data() + pos_), n);
    pos_ += n;
    if (!IsValidUtf8(*s))
      return Fail(StatusCode::kHeaderNotUtf8, std::string(what) + " is not UTF-8");
    return Status::OK();
  }

  // A value of type t as JSON.
  Status ReadValue(uint32_t t, int depth, json* out, const std::string& key) {
    switch (t) {
      case kU8: return Num<uint8_t>(out);
      case kI8: return Num<int8_t>(out);
      case kU16: return Num<uint16_t>(out);
      case kI16: return Num<int16_t>(out);
      case kU32: return Num<uint32_t>(out);
      case kI32: return Num<int32_t>(out);
      case kU64: return Num<uint64_t>(out);
      case kI64: return Num<int64_t>(out);
      case kF32: {
        float v;
        AQ_RETURN_IF_ERROR(Read(&v, "a metadata value"));
        *out = static_cast<double>(v);
        return Status::OK();
      }
      case kF64: return Num<double>(out);
      case kBool: {
        uint8_t v;
        AQ_RETURN_IF_ERROR(Read(&v, "a metadata value"));
        if (v > 1)
          return Fail(StatusCode::kMetadataInvalid,
                      "key '" + key + "': boolean " + std::to_string(v));
        *out = v == 1;
        return Status::OK();
      }
      case kString: {
        std::string s;
        AQ_RETURN_IF_ERROR(ReadString(&s, "a metadata string"));
        *out = std::move(s);
        return Status::OK();
      }
      case kArray: {
        if (depth >= kMaxArrayDepth) {
          return Fail(StatusCode::kMetadataInvalid, "key '" + key + "': arrays nested too deep");
        }
        uint32_t et = 0;
        uint64_t n = 0;
        AQ_RETURN_IF_ERROR(Read(&et, "an array type"));
        AQ_RETURN_IF_ERROR(Read(&n, "an array length"));
        if (et > kF64) {
          return Fail(StatusCode::kMetadataInvalid,
                      "key '" + key + "': unknown array element type " + std::to_string(et));
        }
        if (n > limits_.max_array_values) {
          return Fail(
              StatusCode::kLimitExceeded,
              "key '" + key + "': array of " + std::to_string(n) + " values exceeds the limit");
        }
        // Every element takes at least its scalar size (8 for strings and arrays: a length).
        const uint64_t least = ScalarBytes(et) ? ScalarBytes(et) : 8;
        if (n > left() / least) {
          return Fail(StatusCode::kCorrupt, "key '" + key + "': array of " + std::to_string(n) +
                                                " values runs past the end of the file");
        }
        *out = json::array();
        for (uint64_t i = 0; i < n; ++i) {
          json v;
          AQ_RETURN_IF_ERROR(ReadValue(et, depth + 1, &v, key));
          out->push_back(std::move(v));
        }
        return Status::OK();
      }
      default:
        return Fail(StatusCode::kMetadataInvalid,
                    "key '" + key + "': unknown value type " + std::to_string(t));
    }
  }

 private:
  template <class T>
  Status Num(json* out) {
    T v;
    AQ_RETURN_IF_ERROR(Read(&v, "a metadata value"));
    *out = v;
    return Status::OK();
  }

  std::span<const std::byte> b_;
  std::string_view label_;
  const GgufReaderLimits& limits_;
  uint64_t pos_ = 0;
};

bool MulOverflows(uint64_t a, uint64_t b, uint64_t* out) {
  return __builtin_mul_overflow(a, b, out);
}

}  // namespace

Result<GgufHeader> ParseGguf(std::span<const std::byte> file, std::string_view label,
                             const GgufReaderLimits& limits) {
  Cursor c(file, label, limits);
  GgufHeader h;
  if (file.size() < 24) {
    return Status(StatusCode::kFileTooSmall,
                  std::string(label) + ": " + std::to_string(file.size()) +
                      " bytes is too small for a GGUF file (24-byte header)");
  }
  char magic[4];
  std::memcpy(magic, file.data(), 4);
  if (std::memcmp(magic, "GGUF", 4) != 0) {
    return Status(StatusCode::kFormatInvalid, std::string(label) + ": not a GGUF file (magic)");
  }
  uint32_t m32;
  AQ_RETURN_IF_ERROR(c.Read(&m32, "the magic"));
  AQ_RETURN_IF_ERROR(c.Read(&h.version, "the version"));
  if (h.version != 2 && h.version != 3) {
    // A byte-swapped version is a big-endian file.
    const bool swapped = h.version == 0x02000000u || h.version == 0x03000000u;
    return Status(StatusCode::kUnsupported,
                  std::string(label) + ": GGUF version " + std::to_string(h.version) +
                      (swapped ? " (a big-endian file; only little-endian is read)"
                               : " (versions 2 and 3 are read)"));
  }
  uint64_t n_tensors = 0, n_kv = 0;
  AQ_RETURN_IF_ERROR(c.Read(&n_tensors, "the tensor count"));
  AQ_RETURN_IF_ERROR(c.Read(&n_kv, "the metadata count"));
  if (n_tensors > limits.max_tensors) {
    return c.Fail(StatusCode::kLimitExceeded,
                  std::to_string(n_tensors) + " tensors exceeds the limit");
  }
  if (n_kv > limits.max_kv) {
    return c.Fail(StatusCode::kLimitExceeded,
                  std::to_string(n_kv) + " metadata entries exceeds the limit");
  }
  // Each entry takes at least 12 bytes (key length + type), each tensor info 28.
  if (n_kv > c.left() / 12 || n_tensors > c.left() / 28) {
    return c.Fail(StatusCode::kCorrupt, "the counts (" + std::to_string(n_tensors) + " tensors, " +
                                            std::to_string(n_kv) +
                                            " metadata entries) cannot fit in the file");
  }
  std::unordered_set<std::string> keys;
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    AQ_RETURN_IF_ERROR(c.ReadString(&key, "a metadata key"));
    if (key.empty()) return c.Fail(StatusCode::kMetadataInvalid, "an empty metadata key");
    if (keys.count(key)) {
      return c.Fail(StatusCode::kMetadataInvalid, "metadata key '" + key + "' appears twice");
    }
    uint32_t type = 0;
    AQ_RETURN_IF_ERROR(c.Read(&type, "a metadata type"));
    json value;
    AQ_RETURN_IF_ERROR(c.ReadValue(type, 0, &value, key));
    if (key == "general.alignment") {
      if (type != kU32 || value.get<uint64_t>() == 0 ||
          (value.get<uint64_t>() & (value.get<uint64_t>() - 1)) != 0) {
        return c.Fail(StatusCode::kMetadataInvalid,
                      "general.alignment must be a UINT32 power of two, got " + value.dump());
      }
      h.alignment = value.get<uint32_t>();
    }
    keys.insert(key);
    h.kv.emplace_back(key, value.dump());
    h.kv_types.push_back(type);
  }
  std::unordered_set<std::string> names;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    AQ_RETURN_IF_ERROR(c.ReadString(&t.name, "a tensor name"));
    if (t.name.empty()) return c.Fail(StatusCode::kHeaderInvalidEntry, "an empty tensor name");
    uint32_t n_dims = 0;
    AQ_RETURN_IF_ERROR(c.Read(&n_dims, "a tensor's dimension count"));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return c.Fail(
          StatusCode::kHeaderInvalidEntry,
          "tensor '" + t.name + "': " + std::to_string(n_dims) + " dimensions (1 to 4 allowed)");
    }
    std::vector<uint64_t> ne(n_dims);
    uint64_t count = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      AQ_RETURN_IF_ERROR(c.Read(&ne[d], "a tensor dimension"));
      if (ne[d] > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
          MulOverflows(count, ne[d], &count)) {
        return c.Fail(StatusCode::kShapeOverflow,
                      "tensor '" + t.name + "': its dimensions overflow 64 bits");
      }
    }
    AQ_RETURN_IF_ERROR(c.Read(&t.type, "a tensor type"));
    const GgufTypeInfo* info = FindGgufType(t.type);
    if (info == nullptr) {
      return c.Fail(StatusCode::kUnknownDtype,
                    "tensor '" + t.name + "': unknown ggml type " + std::to_string(t.type));
    }
    if (ne[0] % info->block != 0) {
      return c.Fail(StatusCode::kSizeMismatch,
                    "tensor '" + t.name + "': first dimension " + std::to_string(ne[0]) +
                        " is not a multiple of " + std::string(info->name) + "'s block of " +
                        std::to_string(info->block));
    }
    if (MulOverflows(count / info->block, info->bytes, &t.nbytes)) {
      return c.Fail(StatusCode::kShapeOverflow, "tensor '" + t.name + "': its size overflows");
    }
    AQ_RETURN_IF_ERROR(c.Read(&t.offset, "a tensor offset"));
    t.shape.assign(ne.rbegin(), ne.rend());
    if (!names.insert(t.name).second) {
      return c.Fail(StatusCode::kDuplicateName, "tensor '" + t.name + "' appears twice");
    }
    h.tensors.push_back(std::move(t));
  }
  const uint64_t align = h.alignment;
  h.data_offset = (c.pos() + align - 1) / align * align;
  if (h.data_offset > file.size() && !h.tensors.empty()) {
    return Status(StatusCode::kDataOutOfBounds,
                  std::string(label) + ": the data section starts past the end of the file");
  }
  std::vector<std::pair<uint64_t, size_t>> order;
  for (size_t i = 0; i < h.tensors.size(); ++i) {
    GgufTensorInfo& t = h.tensors[i];
    if (t.offset % align != 0) {
      return Status(StatusCode::kOffsetsInvalid, std::string(label) + ": tensor '" + t.name +
                                                     "': offset " + std::to_string(t.offset) +
                                                     " is not a multiple of the alignment " +
                                                     std::to_string(align));
    }
    const uint64_t room = file.size() - h.data_offset;
    if (t.offset > room || t.nbytes > room - t.offset) {
      return Status(StatusCode::kDataOutOfBounds,
                    std::string(label) + ": tensor '" + t.name + "' (" + std::to_string(t.nbytes) +
                        " bytes at data offset " + std::to_string(t.offset) +
                        ") runs past the end of the file");
    }
    t.offset += h.data_offset;
    order.emplace_back(t.offset, i);
  }
  std::sort(order.begin(), order.end());
  for (size_t k = 1; k < order.size(); ++k) {
    const GgufTensorInfo& prev = h.tensors[order[k - 1].second];
    const GgufTensorInfo& cur = h.tensors[order[k].second];
    if (prev.offset + prev.nbytes > cur.offset) {
      return Status(StatusCode::kOffsetsInvalid, std::string(label) + ": tensors '" + prev.name +
                                                     "' and '" + cur.name + "' overlap");
    }
  }
  return h;
}

}  // namespace arrowquant
