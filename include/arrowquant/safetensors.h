// SafeTensors reading: one file, memory-mapped read-only, validated as strictly as the
// reference implementation before any tensor byte is handed out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "arrowquant/dtype.h"
#include "arrowquant/status.h"

namespace arrowquant {

// Caps on what a reader accepts. The defaults follow the reference implementation (100 MB
// header) and otherwise only guard against arithmetic overflow.
struct ReaderLimits {
  uint64_t max_header_bytes = 100'000'000;
  uint64_t max_tensors = 10'000'000;
  uint64_t max_tensor_bytes = UINT64_MAX;
  uint64_t max_total_bytes = UINT64_MAX;
};

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // byte offsets relative to the data section, end exclusive
  uint64_t end = 0;

  uint64_t nbytes() const { return end - begin; }
  uint64_t num_elements() const;
};

// The validated content of a SafeTensors header. Tensors are in file (offset) order.
struct SafeTensorsHeader {
  uint64_t header_bytes = 0;  // the JSON, without the 8-byte length prefix
  std::vector<TensorInfo> tensors;
  std::map<std::string, std::string> metadata;  // __metadata__
  uint64_t data_offset() const { return 8 + header_bytes; }
};

// Validates a whole SafeTensors image. `label` (usually the path) starts every error message.
// Pure function over bytes: this is what the fuzzer drives.
Result<SafeTensorsHeader> ParseSafeTensors(std::span<const std::byte> file, std::string_view label,
                                           const ReaderLimits& limits = {});

class MappedFile;

class SafeTensorsFile {
 public:
  // Maps `path` read-only and validates it. The mapping lives as long as the returned object;
  // hold the shared_ptr for as long as any span from Data() is in use.
  static Result<std::shared_ptr<SafeTensorsFile>> Open(const std::string& path,
                                                       const ReaderLimits& limits = {});
  ~SafeTensorsFile();
  SafeTensorsFile(const SafeTensorsFile&) = delete;
  SafeTensorsFile& operator=(const SafeTensorsFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t file_size() const;
  const std::vector<TensorInfo>& tensors() const { return header_.tensors; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const SafeTensorsHeader& header() const { return header_; }
  const TensorInfo* Find(std::string_view name) const;
  std::span<const std::byte> Data(const TensorInfo& info) const;
  // Done with this tensor: release its pages from the resident set (memory stays bounded by
  // the tensors in flight, not the file). Spans stay valid; touching them faults pages back in.
  void Evict(const TensorInfo& info) const;

 private:
  SafeTensorsFile(std::string path, std::unique_ptr<MappedFile> map, SafeTensorsHeader header);

  std::string path_;
  std::unique_ptr<MappedFile> map_;
  SafeTensorsHeader header_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

}  // namespace arrowquant
