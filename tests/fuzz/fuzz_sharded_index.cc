// libFuzzer: the sharded index (*.safetensors.index.json) parser, path resolution and the
// index/shard agreement checks. The input is the index text; two real shards sit beside it, and
// a file outside the model folder that no index may reach.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "arrowquant/checkpoint.h"

namespace fs = std::filesystem;

static void WriteShard(const fs::path& p, const std::string& tensor) {
  const std::string header =
      "{\"" + tensor + "\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
  std::ofstream f(p, std::ios::binary);
  const uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header;
  f.write("\0\0\0\0\0\0\0\0", 8);
}

static fs::path Setup() {
  const fs::path root = fs::temp_directory_path() / ("aq-fuzz-index-" + std::to_string(getpid()));
  fs::create_directories(root / "model");
  WriteShard(root / "model" / "a.safetensors", "x");
  WriteShard(root / "model" / "b.safetensors", "y");
  WriteShard(root / "outside.safetensors", "z");
  return root;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const fs::path root = Setup();
  const fs::path index = root / "model" / "model.safetensors.index.json";
  {
    std::ofstream f(index, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  auto ck = arrowquant::Checkpoint::Open(index.string());
  if (ck.ok()) {
    // Whatever it accepted must come from inside the model folder.
    for (const auto& t : (*ck)->tensors()) {
      if (t.name == "z") __builtin_trap();
    }
  }
  return 0;
}
