#include "arrowquant/safetensors.h"
#include "formats/safetensors/mapped_file.h"

namespace arrowquant {

SafeTensorsFile::SafeTensorsFile(std::string path, std::unique_ptr<MappedFile> map,
                                 SafeTensorsHeader header)
    : path_(std::move(path)), map_(std::move(map)), header_(std::move(header)) {
  for (size_t i = 0; i < header_.tensors.size(); ++i) by_name_.emplace(header_.tensors[i].name, i);
}

SafeTensorsFile::~SafeTensorsFile() = default;

Result<std::shared_ptr<SafeTensorsFile>> SafeTensorsFile::Open(const std::string& path,
                                                               const ReaderLimits& limits) {
  AQ_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> map, MappedFile::Open(path));
  AQ_ASSIGN_OR_RETURN(SafeTensorsHeader header, ParseSafeTensors(map->bytes(), path, limits));
  return std::shared_ptr<SafeTensorsFile>(
      new SafeTensorsFile(path, std::move(map), std::move(header)));
}

uint64_t SafeTensorsFile::file_size() const {
  return map_->bytes().size();
}

const TensorInfo* SafeTensorsFile::Find(std::string_view name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &header_.tensors[it->second];
}

void SafeTensorsFile::Evict(const TensorInfo& info) const {
  map_->Evict(header_.data_offset() + info.begin, info.nbytes());
}

std::span<const std::byte> SafeTensorsFile::Data(const TensorInfo& info) const {
  return map_->bytes().subspan(header_.data_offset() + info.begin, info.nbytes());
}

}  // namespace arrowquant
