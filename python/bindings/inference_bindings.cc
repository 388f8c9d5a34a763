// Integer inference for arrowquant.torch's packed layers with quantized activations:
// Int8Weight (prepared once per layer), int8_linear, int8_conv2d; GIL released while they run.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/unique_ptr.h>

#include <memory>
#include <optional>
#include <span>

#include "arrowquant/int8_inference.h"
#include "bindings.h"
#include "convert.h"
#include "status_error.h"

namespace nb = nanobind;

namespace arrowquant::py {
namespace {

using ByteArray = Bytes1D;
using InF32 = nb::ndarray<nb::ro, float, nb::c_contig, nb::device::cpu>;
using OutF32 = nb::ndarray<float, nb::c_contig, nb::device::cpu>;

std::span<const float> Floats(const InF32& a) {
  return {static_cast<const float*>(a.data()), a.size()};
}
std::span<const float> Floats(const std::optional<InF32>& a) {
  return a ? Floats(*a) : std::span<const float>();
}

}  // namespace

void BindInference(nb::module_& m) {
  nb::class_<Int8Weight>(m, "Int8Weight")
      .def_prop_ro("rows", &Int8Weight::rows)
      .def_prop_ro("cols", &Int8Weight::cols)
      .def_prop_ro("nbytes", &Int8Weight::nbytes);
  // The packed weight's four buffers and its format numbers (arrowquant.torch.ops' fmt).
  m.def(
      "int8_weight",
      [](ByteArray codes, ByteArray scales, ByteArray zeros, ByteArray super_scales, int bits,
         int group_size, int scheme, int scale_storage, int scale_bits, uint64_t rows,
         uint64_t cols, int threads) {
        const QuantizedView v =
            PackedView(codes, scales, zeros, super_scales, bits, group_size, scheme, scale_storage,
                       scale_bits, rows, cols, "int8_weight");
        nb::gil_scoped_release release;
        return ValueOrThrow(Int8Weight::Make(v, QuantOptions{threads}));
      },
      nb::arg("codes"), nb::arg("scales"), nb::arg("zeros"), nb::arg("super_scales"),
      nb::arg("bits"), nb::arg("group_size"), nb::arg("scheme"), nb::arg("scale_storage"),
      nb::arg("scale_bits"), nb::arg("rows"), nb::arg("cols"), nb::arg("threads") = 1);
  m.def(
      "int8_linear",
      [](InF32 x, const Int8Weight& w, float scale, float zero, std::optional<InF32> bias,
         OutF32 out, int threads) {
        const uint64_t m_rows = w.cols() ? x.size() / w.cols() : 0;
        std::span<float> y(static_cast<float*>(out.data()), out.size());
        nb::gil_scoped_release release;
        ThrowIfError(Int8Linear(Floats(x), m_rows, w, ActGrid{scale, zero}, Floats(bias), y,
                                QuantOptions{threads}));
      },
      nb::arg("x"), nb::arg("weight"), nb::arg("scale"), nb::arg("zero"), nb::arg("bias").none(),
      nb::arg("out"), nb::arg("threads") = 1);
  m.def(
      "int8_conv2d",
      [](InF32 x, const Int8Weight& w, float scale, float zero, std::optional<InF32> bias,
         uint64_t kernel_h, uint64_t kernel_w, uint64_t stride_h, uint64_t stride_w, uint64_t pad_h,
         uint64_t pad_w, uint64_t dilation_h, uint64_t dilation_w, OutF32 out, int threads) {
        if (x.ndim() != 4) {
          throw StatusError(
              Status(StatusCode::kInvalidArgument, "int8_conv2d: input must be NCHW"));
        }
        Conv2dShape s;
        s.batch = x.shape(0);
        s.channels = x.shape(1);
        s.height = x.shape(2);
        s.width = x.shape(3);
        s.kernel_h = kernel_h;
        s.kernel_w = kernel_w;
        s.stride_h = stride_h;
        s.stride_w = stride_w;
        s.pad_h = pad_h;
        s.pad_w = pad_w;
        s.dilation_h = dilation_h;
        s.dilation_w = dilation_w;
        std::span<float> y(static_cast<float*>(out.data()), out.size());
        nb::gil_scoped_release release;
        ThrowIfError(Int8Conv2d(Floats(x), s, w, ActGrid{scale, zero}, Floats(bias), y,
                                QuantOptions{threads}));
      },
      nb::arg("x"), nb::arg("weight"), nb::arg("scale"), nb::arg("zero"), nb::arg("bias").none(),
      nb::arg("kernel_h"), nb::arg("kernel_w"), nb::arg("stride_h"), nb::arg("stride_w"),
      nb::arg("pad_h"), nb::arg("pad_w"), nb::arg("dilation_h"), nb::arg("dilation_w"),
      nb::arg("out"), nb::arg("threads") = 1);
  // "avx512-vnni" where the CPU has an integer dot product the kernel uses, else "scalar".
  m.def("int8_kernel", []() { return Int8KernelName(); });
}

}  // namespace arrowquant::py
