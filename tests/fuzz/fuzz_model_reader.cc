// libFuzzer: the Extended Parquet V2 model reader. Each input is written to a file and opened;
// every tensor the reader accepts is read back (dequantized or raw) when it is small enough.
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "arrowquant/model_file.h"

namespace fs = std::filesystem;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path =
      (fs::temp_directory_path() / ("aq-fuzz-model-" + std::to_string(getpid()) + ".parquet"))
          .string();
  {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  auto r = arrowquant::ModelReader::Open(path);
  if (!r.ok()) return 0;
  for (const auto& t : (*r)->tensors()) {
    if (t.num_params > (1u << 20)) continue;
    std::vector<std::byte> out(t.num_params * 4);
    (void)(*r)->Dequantize(t.name, arrowquant::DType::kF32, out);
    (void)(*r)->ReadRaw(t.name);
    (void)(*r)->ReadQuantized(t.name);
  }
  return 0;
}
