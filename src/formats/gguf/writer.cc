// GgufWriter: header (metadata, tensor infos with offsets computed from shapes and types) first,
// then the tensors' bytes in header order, each at a multiple of the alignment; written under a
// temporary name beside the output and renamed once complete and synced.
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "arrowquant/gguf.h"

namespace arrowquant {

struct GgufWriter::Impl {
  std::string path, tmp;
  std::FILE* f = nullptr;
  uint32_t alignment = 32;
  std::vector<uint64_t> sizes;
  size_t next = 0;
  bool begun = false, done = false;
  uint64_t written = 0;

  Status Io(const std::string& what) const {
    return Status(StatusCode::kIoError, path + ": " + what + " (" + std::strerror(errno) + ")");
  }
  Status Bytes(const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, f) != n) return Io("write failed");
    written += n;
    return Status::OK();
  }
  template <class T>
  Status Put(T v) {
    return Bytes(&v, sizeof(T));
  }
  Status String(const std::string& s) {
    AQ_RETURN_IF_ERROR(Put<uint64_t>(s.size()));
    return Bytes(s.data(), s.size());
  }
  Status Pad() {
    static const char zeros[64] = {};
    uint64_t pad = (alignment - written % alignment) % alignment;
    while (pad) {
      const uint64_t n = std::min<uint64_t>(pad, sizeof(zeros));
      AQ_RETURN_IF_ERROR(Bytes(zeros, n));
      pad -= n;
    }
    return Status::OK();
  }
  Status Value(const GgufKV& kv) {
    nlohmann::json v = nlohmann::json::parse(kv.json, nullptr, /*allow_exceptions=*/false);
    if (v.is_discarded()) {
      return Status(StatusCode::kInvalidArgument, "metadata '" + kv.key + "': not JSON");
    }
    AQ_RETURN_IF_ERROR(Put<uint32_t>(kv.type));
    auto bad = [&] {
      return Status(StatusCode::kInvalidArgument, "metadata '" + kv.key + "': value " + kv.json +
                                                      " does not match type " +
                                                      std::to_string(kv.type));
    };
    switch (kv.type) {
      case 4:
        if (!v.is_number_unsigned()) return bad();
        return Put<uint32_t>(v.get<uint32_t>());
      case 5:
        if (!v.is_number_integer()) return bad();
        return Put<int32_t>(v.get<int32_t>());
      case 6:
        if (!v.is_number()) return bad();
        return Put<float>(v.get<float>());
      case 7:
        if (!v.is_boolean()) return bad();
        return Put<uint8_t>(v.get<bool>() ? 1 : 0);
      case 8:
        if (!v.is_string()) return bad();
        return String(v.get<std::string>());
      case 10:
        if (!v.is_number_unsigned()) return bad();
        return Put<uint64_t>(v.get<uint64_t>());
      case 9: {
        if (!v.is_array()) return bad();
        AQ_RETURN_IF_ERROR(Put<uint32_t>(8));
        AQ_RETURN_IF_ERROR(Put<uint64_t>(v.size()));
        for (const auto& e : v) {
          if (!e.is_string()) return bad();
          AQ_RETURN_IF_ERROR(String(e.get<std::string>()));
        }
        return Status::OK();
      }
      default: return bad();
    }
  }
};

GgufWriter::GgufWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

GgufWriter::~GgufWriter() {
  if (impl_->f) std::fclose(impl_->f);
  if (!impl_->done) std::remove(impl_->tmp.c_str());
}

Result<std::unique_ptr<GgufWriter>> GgufWriter::Make(const std::string& path, uint32_t alignment) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0) {
    return Status(StatusCode::kInvalidArgument, "GGUF alignment must be a power of two");
  }
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->tmp = path + ".tmp-" + std::to_string(::getpid());
  impl->alignment = alignment;
  impl->f = std::fopen(impl->tmp.c_str(), "wb");
  if (!impl->f) return impl->Io("cannot create " + impl->tmp);
  // Large writes: the tensors come in megabytes, the header in many small pieces.
  std::setvbuf(impl->f, nullptr, _IOFBF, 8 << 20);
  return std::unique_ptr<GgufWriter>(new GgufWriter(std::move(impl)));
}

uint64_t GgufWriter::TensorBytes(size_t index) const {
  return index < impl_->sizes.size() ? impl_->sizes[index] : 0;
}

Status GgufWriter::Begin(const std::vector<GgufKV>& kv,
                         const std::vector<GgufTensorSpec>& tensors) {
  Impl& m = *impl_;
  if (m.begun) return Status(StatusCode::kInvalidArgument, m.path + ": Begin() called twice");
  m.begun = true;
  AQ_RETURN_IF_ERROR(m.Bytes("GGUF", 4));
  AQ_RETURN_IF_ERROR(m.Put<uint32_t>(3));
  AQ_RETURN_IF_ERROR(m.Put<uint64_t>(tensors.size()));
  const bool has_alignment = m.alignment != 32;
  AQ_RETURN_IF_ERROR(m.Put<uint64_t>(kv.size() + (has_alignment ? 1 : 0)));
  if (has_alignment) {
    AQ_RETURN_IF_ERROR(m.String("general.alignment"));
    AQ_RETURN_IF_ERROR(m.Value({"general.alignment", 4, std::to_string(m.alignment)}));
  }
  for (const GgufKV& e : kv) {
    if (e.key == "general.alignment") {
      return Status(StatusCode::kInvalidArgument, "set the alignment through Make()");
    }
    AQ_RETURN_IF_ERROR(m.String(e.key));
    AQ_RETURN_IF_ERROR(m.Value(e));
  }
  uint64_t offset = 0;
  for (const GgufTensorSpec& t : tensors) {
    const GgufTypeInfo* info = FindGgufType(static_cast<uint32_t>(t.type));
    const uint64_t ne0 = t.shape.empty() ? 1 : t.shape.back();
    if (info == nullptr || ne0 % info->block != 0) {
      return Status(StatusCode::kInvalidArgument,
                    m.path + ": tensor '" + t.name + "' cannot be stored as " +
                        std::string(info ? info->name : "an unknown type"));
    }
    if (t.shape.size() > 4) {
      return Status(StatusCode::kInvalidArgument,
                    m.path + ": tensor '" + t.name + "' has more than 4 dimensions");
    }
    uint64_t n = 1;
    for (uint64_t d : t.shape) n *= d;
    const uint64_t bytes = n / info->block * info->bytes;
    AQ_RETURN_IF_ERROR(m.String(t.name));
    const uint32_t dims = t.shape.empty() ? 1 : static_cast<uint32_t>(t.shape.size());
    AQ_RETURN_IF_ERROR(m.Put<uint32_t>(dims));
    if (t.shape.empty()) {
      AQ_RETURN_IF_ERROR(m.Put<uint64_t>(1));
    } else {
      for (auto it = t.shape.rbegin(); it != t.shape.rend(); ++it) {
        AQ_RETURN_IF_ERROR(m.Put<uint64_t>(*it));
      }
    }
    AQ_RETURN_IF_ERROR(m.Put<uint32_t>(static_cast<uint32_t>(t.type)));
    AQ_RETURN_IF_ERROR(m.Put<uint64_t>(offset));
    m.sizes.push_back(bytes);
    offset += (bytes + m.alignment - 1) / m.alignment * m.alignment;
  }
  return m.Pad();
}

Status GgufWriter::WriteTensor(size_t index, std::span<const uint8_t> bytes) {
  Impl& m = *impl_;
  if (!m.begun || index != m.next || index >= m.sizes.size()) {
    return Status(StatusCode::kInvalidArgument,
                  m.path + ": tensor " + std::to_string(index) + " written out of order");
  }
  if (bytes.size() != m.sizes[index]) {
    return Status(StatusCode::kSizeMismatch, m.path + ": tensor " + std::to_string(index) +
                                                 " has " + std::to_string(bytes.size()) +
                                                 " bytes, its header says " +
                                                 std::to_string(m.sizes[index]));
  }
  AQ_RETURN_IF_ERROR(m.Bytes(bytes.data(), bytes.size()));
  ++m.next;
  return m.Pad();
}

Status GgufWriter::Finish() {
  Impl& m = *impl_;
  if (!m.begun || m.next != m.sizes.size()) {
    return Status(StatusCode::kInvalidArgument,
                  m.path + ": " + std::to_string(m.sizes.size() - m.next) + " tensors not written");
  }
  if (std::fflush(m.f) != 0 || ::fsync(fileno(m.f)) != 0) return m.Io("cannot flush");
  if (std::fclose(m.f) != 0) {
    m.f = nullptr;
    return m.Io("cannot close");
  }
  m.f = nullptr;
  if (std::rename(m.tmp.c_str(), m.path.c_str()) != 0) {
    return m.Io("cannot move the finished file into place");
  }
  m.done = true;
  return Status::OK();
}

}  // namespace arrowquant
