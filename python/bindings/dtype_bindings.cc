#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <vector>

#include "arrowquant/dtype.h"
#include "bindings.h"

namespace nb = nanobind;

namespace arrowquant::py {
namespace {

template <typename In, typename Out, void (*Convert)(std::span<const In>, std::span<Out>)>
nb::ndarray<nb::numpy, Out> ConvertArray(nb::ndarray<const In, nb::c_contig, nb::device::cpu> in) {
  const size_t n = in.size();
  auto* out = new Out[n];
  nb::capsule owner(out, [](void* p) noexcept { delete[] static_cast<Out*>(p); });
  {
    nb::gil_scoped_release release;
    Convert({in.data(), n}, {out, n});
  }
  std::vector<size_t> shape(in.ndim());
  for (size_t i = 0; i < in.ndim(); ++i) shape[i] = in.shape(i);
  return nb::ndarray<nb::numpy, Out>(out, shape.size(), shape.data(), owner);
}

}  // namespace

void BindDtypes(nb::module_& m) {
  m.def("f16_bits_to_f32", &ConvertArray<uint16_t, float, &F16ToF32>, nb::arg("bits"),
        "uint16 bit patterns of IEEE half floats -> float32 (exact, NaN payloads kept).");
  m.def("f32_to_f16_bits", &ConvertArray<float, uint16_t, &F32ToF16>, nb::arg("values"),
        "float32 -> uint16 half-float bit patterns, round to nearest even.");
  m.def("bf16_bits_to_f32", &ConvertArray<uint16_t, float, &BF16ToF32>, nb::arg("bits"));
  m.def("f32_to_bf16_bits", &ConvertArray<float, uint16_t, &F32ToBF16>, nb::arg("values"));
  nb::list table;
  for (const auto& t : AllDTypes()) {
    nb::dict d;
    d["name"] = std::string(t.safetensors_name);
    d["array_name"] = std::string(t.array_name);
    d["bits"] = t.bits;
    d["floating"] = t.floating;
    d["quantizable"] = t.quantizable;
    table.append(d);
  }
  m.attr("DTYPES") = table;
}

}  // namespace arrowquant::py
