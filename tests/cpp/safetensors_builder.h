// Test helper: builds SafeTensors images byte by byte, valid or deliberately broken.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace arrowquant::testing {

// 8-byte little-endian length (`claimed_len`, default: the real length), header, data.
inline std::string RawFile(const std::string& header, const std::string& data,
                           int64_t claimed_len = -1) {
  const uint64_t n = claimed_len < 0 ? header.size() : static_cast<uint64_t>(claimed_len);
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

struct Entry {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  std::string bytes;
};

// A valid file holding `entries` back to back, in the given order.
inline std::string ValidFile(const std::vector<Entry>& entries,
                             const std::string& metadata_json = "") {
  std::string header = "{";
  std::string data;
  bool first = true;
  if (!metadata_json.empty()) {
    header += "\"__metadata__\":" + metadata_json;
    first = false;
  }
  for (const auto& e : entries) {
    std::string shape;
    for (auto d : e.shape) shape += (shape.empty() ? "" : ",") + std::to_string(d);
    header += std::string(first ? "" : ",") + "\"" + e.name + "\":{\"dtype\":\"" + e.dtype +
              "\",\"shape\":[" + shape + "],\"data_offsets\":[" + std::to_string(data.size()) +
              "," + std::to_string(data.size() + e.bytes.size()) + "]}";
    data += e.bytes;
    first = false;
  }
  header += "}";
  return RawFile(header, data);
}

inline void WriteFile(const std::filesystem::path& p, const std::string& bytes) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline std::filesystem::path TempDir(const std::string& name) {
  auto p = std::filesystem::temp_directory_path() /
           ("aq_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

}  // namespace arrowquant::testing
