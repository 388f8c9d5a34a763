// GgufFile: a memory-mapped, validated GGUF file (tensor bytes are views into the mapping).
#include "arrowquant/gguf.h"
#include "formats/safetensors/mapped_file.h"

namespace arrowquant {

GgufFile::GgufFile(std::string path, std::unique_ptr<MappedFile> map, GgufHeader header)
    : path_(std::move(path)), map_(std::move(map)), header_(std::move(header)) {
  for (size_t i = 0; i < header_.tensors.size(); ++i) by_name_.emplace(header_.tensors[i].name, i);
}

GgufFile::~GgufFile() = default;

Result<std::shared_ptr<GgufFile>> GgufFile::Open(const std::string& path,
                                                 const GgufReaderLimits& limits) {
  AQ_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> map, MappedFile::Open(path));
  AQ_ASSIGN_OR_RETURN(GgufHeader header, ParseGguf(map->bytes(), path, limits));
  return std::shared_ptr<GgufFile>(new GgufFile(path, std::move(map), std::move(header)));
}

const GgufTensorInfo* GgufFile::Find(std::string_view name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &header_.tensors[it->second];
}

std::span<const uint8_t> GgufFile::Data(const GgufTensorInfo& info) const {
  const auto bytes = map_->bytes().subspan(info.offset, info.nbytes);
  return {reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()};
}

Status GgufFile::Decode(const GgufTensorInfo& info, float* out, int threads) const {
  Status s =
      GgufDecode(static_cast<GgufType>(info.type), Data(info), info.num_elements(), out, threads);
  if (!s.ok()) {
    return Status(s.code(), path_ + ": tensor '" + info.name + "': " + s.message());
  }
  return s;
}

}  // namespace arrowquant
