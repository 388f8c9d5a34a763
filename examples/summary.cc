// Example: the C++ library on its own. Prints every tensor of a checkpoint.
//   aq_summary MODEL   (a .safetensors file, a sharded index, or a (diffusers) model folder)
#include <cstdio>

#include "arrowquant/checkpoint.h"

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s MODEL\n", argv[0]);
    return 2;
  }
  auto ck = arrowquant::Checkpoint::Open(argv[1]);
  if (!ck.ok()) {
    std::fprintf(stderr, "error: %s\n", ck.status().ToString().c_str());
    return 2;
  }
  const auto& c = **ck;
  std::printf("%s (%s), %zu tensors, %llu bytes\n", argv[1],
              std::string(arrowquant::CheckpointLayoutName(c.layout())).c_str(), c.tensors().size(),
              static_cast<unsigned long long>(c.total_tensor_bytes()));
  for (const auto& t : c.tensors()) {
    std::string shape;
    for (auto d : t.info->shape) shape += (shape.empty() ? "" : "x") + std::to_string(d);
    std::printf("%-60s %-8s %-20s %12llu\n", t.name.c_str(),
                std::string(arrowquant::Traits(t.info->dtype).safetensors_name).c_str(),
                shape.empty() ? "scalar" : shape.c_str(),
                static_cast<unsigned long long>(t.info->nbytes()));
  }
  return 0;
}
