// libFuzzer: the GGUF parser and validator over arbitrary bytes, then every tensor it accepts
// decoded (types decoded here) - a valid header must describe tensors inside the bytes given.
#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "arrowquant/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  arrowquant::GgufReaderLimits limits;
  limits.max_string_bytes = 1 << 20;
  limits.max_array_values = 1 << 16;
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  auto r = arrowquant::ParseGguf(file, "fuzz", limits);
  if (!r.ok()) return 0;
  for (const auto& t : r->tensors) {
    if (t.offset > size || t.nbytes > size - t.offset) __builtin_trap();
    const uint64_t n = t.num_elements();
    if (n > (1u << 16)) continue;
    std::vector<float> out(n);
    const auto s = arrowquant::GgufDecode(static_cast<arrowquant::GgufType>(t.type),
                                          {data + t.offset, t.nbytes}, n, out.data());
    (void)s;  // unsupported types are an error, never a crash
  }
  return 0;
}
