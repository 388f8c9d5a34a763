// Read-only memory mapping of a whole file (POSIX mmap). Opened O_RDONLY: input is never modified.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include "arrowquant/status.h"

namespace arrowquant {

class MappedFile {
 public:
  static Result<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  std::span<const std::byte> bytes() const { return {data_, size_}; }
  // Drops the whole pages inside [offset, offset + length) from this process's resident set
  // (they stay in the page cache and fault back in if touched again).
  void Evict(size_t offset, size_t length) const;

 private:
  MappedFile(const std::byte* data, size_t size) : data_(data), size_(size) {}
  const std::byte* data_;
  size_t size_;
};

}  // namespace arrowquant
