// libFuzzer: the SafeTensors header parser and validator over arbitrary bytes.
#include <cstddef>
#include <cstdint>
#include <span>

#include "arrowquant/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  arrowquant::ReaderLimits limits;
  limits.max_header_bytes = 1 << 20;
  auto r = arrowquant::ParseSafeTensors(
      std::span<const std::byte>(reinterpret_cast<const std::byte*>(data), size), "fuzz", limits);
  if (r.ok()) {
    // A valid header must describe tensors that lie inside the bytes we were given.
    for (const auto& t : r->tensors) {
      if (t.end < t.begin || t.end > size) __builtin_trap();
    }
  }
  return 0;
}
