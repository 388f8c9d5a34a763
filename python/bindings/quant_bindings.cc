#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "arrowquant/quantize.h"
#include "bindings.h"
#include "convert.h"
#include "quant/error_sums.h"
#include "status_error.h"

namespace nb = nanobind;

namespace arrowquant::py {
namespace {

using InArray = nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu>;
using ByteArray = Bytes1D;
using OutArray = nb::ndarray<nb::c_contig, nb::device::cpu>;

TensorView ViewOf(const InArray& a, const std::string& dtype, const std::string& name) {
  TensorView v;
  v.name = name;
  v.dtype = ParseDType(dtype);
  for (size_t i = 0; i < a.ndim(); ++i) v.shape.push_back(static_cast<uint64_t>(a.shape(i)));
  const size_t item = a.itemsize();
  if (item != ElementBytes(v.dtype)) {
    throw StatusError(Status(StatusCode::kInvalidArgument,
                             "tensor '" + name + "': array items are " + std::to_string(item) +
                                 " bytes, " + dtype + " needs " +
                                 std::to_string(ElementBytes(v.dtype))));
  }
  v.data = {static_cast<const std::byte*>(a.data()), a.size() * item};
  return v;
}

template <typename T>
nb::ndarray<nb::numpy, const uint8_t> BufferView(const std::vector<T>& buf) {
  const size_t shape[1] = {buf.size() * sizeof(T)};
  return nb::ndarray<nb::numpy, const uint8_t>(reinterpret_cast<const uint8_t*>(buf.data()), 1,
                                               shape, nb::handle());
}

}  // namespace

void BindQuantize(nb::module_& m) {
  nb::class_<QuantizedTensor>(m, "QuantizedTensor")
      .def_prop_ro(
          "codes", [](const QuantizedTensor& q) { return BufferView(q.codes); },
          nb::rv_policy::reference_internal)
      .def_prop_ro(
          "scales", [](const QuantizedTensor& q) { return BufferView(q.scales); },
          nb::rv_policy::reference_internal)
      .def_prop_ro(
          "zeros", [](const QuantizedTensor& q) { return BufferView(q.zeros); },
          nb::rv_policy::reference_internal)
      .def_prop_ro(
          "super_scales", [](const QuantizedTensor& q) { return BufferView(q.super_scales); },
          nb::rv_policy::reference_internal)
      .def_prop_ro("shape", [](const QuantizedTensor& q) { return q.shape; })
      .def_prop_ro("rows", [](const QuantizedTensor& q) { return q.rows; })
      .def_prop_ro("cols", [](const QuantizedTensor& q) { return q.cols; })
      .def_prop_ro("groups_per_row", &QuantizedTensor::groups_per_row)
      .def_prop_ro("source_dtype",
                   [](const QuantizedTensor& q) {
                     return std::string(Traits(q.source_dtype).safetensors_name);
                   })
      .def_prop_ro("spec", [](const QuantizedTensor& q) { return SpecDict(q.spec); })
      .def_prop_ro("nbytes", &QuantizedTensor::nbytes)
      .def_prop_ro("bits_per_weight", &QuantizedTensor::bits_per_weight)
      .def(
          "dequantize",
          [](const QuantizedTensor& q, const std::string& dtype, int threads) {
            const DType dt = ParseDType(dtype);
            const size_t n = q.num_elements();
            const size_t es = ElementBytes(dt);
            auto* buf = new std::byte[n * es];
            nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<std::byte*>(p); });
            {
              nb::gil_scoped_release release;
              ThrowIfError(Dequantize(q, dt, {buf, n * es}, QuantOptions{threads}));
            }
            std::vector<size_t> shape(q.shape.begin(), q.shape.end());
            nb::dlpack::dtype d =
                dt == DType::kF32 ? nb::dtype<float>()
                : dt == DType::kF16
                    ? nb::dlpack::dtype{static_cast<uint8_t>(nb::dlpack::dtype_code::Float), 16, 1}
                    : nb::dtype<uint16_t>();
            return nb::ndarray<nb::numpy>(buf, shape.size(), shape.data(), owner, nullptr, d);
          },
          nb::arg("dtype") = "F32", nb::arg("threads") = 1)
      .def(
          "measure_error",
          [](const QuantizedTensor& q, InArray a, const std::string& dtype, int threads) {
            const TensorView v = ViewOf(a, dtype, "reference");
            ErrorMetrics e;
            {
              nb::gil_scoped_release release;
              e = ValueOrThrow(MeasureError(q, v, QuantOptions{threads}));
            }
            return MetricsDict(e);
          },
          nb::arg("reference"), nb::arg("dtype"), nb::arg("threads") = 1);

  m.def(
      "error_metrics",
      [](nb::ndarray<nb::ro, float, nb::c_contig, nb::device::cpu> reference,
         nb::ndarray<nb::ro, float, nb::c_contig, nb::device::cpu> values) {
        if (reference.size() != values.size()) {
          throw StatusError(Status(StatusCode::kSizeMismatch,
                                   "error_metrics: " + std::to_string(reference.size()) +
                                       " reference values, " + std::to_string(values.size()) +
                                       " values"));
        }
        ErrorMetrics e;
        {
          nb::gil_scoped_release release;
          e = quant::Combine({quant::SumsOf(reference.data(), values.data(), reference.size())},
                             reference.size());
        }
        return MetricsDict(e);
      },
      nb::arg("reference"), nb::arg("values"),
      "Error of `values` against `reference` (float32 arrays of equal size): the metrics "
      "quantization reports.");
  m.def(
      "quantize",
      [](InArray a, const std::string& dtype, const std::string& name, int bits, int group_size,
         const std::string& scheme, const std::string& method, const std::string& scale_dtype,
         int threads) {
        const QuantSpec spec =
            ValueOrThrow(QuantSpec::FromFields(bits, group_size, scheme, method, scale_dtype));
        const TensorView v = ViewOf(a, dtype, name);
        nb::gil_scoped_release release;
        return ValueOrThrow(Quantize(v, spec, QuantOptions{threads}));
      },
      nb::arg("array"), nb::arg("dtype"), nb::arg("name"), nb::arg("bits"), nb::arg("group_size"),
      nb::arg("scheme"), nb::arg("method"), nb::arg("scale_dtype"), nb::arg("threads") = 1);
  // Inference (arrowquant.torch's packed modules): rows [begin, end) of a weight whose four
  // buffers the caller owns, decoded into the caller's `out` (F32/F16/BF16 by its dtype), GIL
  // released. The spec comes as numbers so that a forward pass parses no strings.
  m.def(
      "dequantize_rows",
      [](ByteArray codes, ByteArray scales, ByteArray zeros, ByteArray super_scales, int bits,
         int group_size, int scheme, int scale_storage, int scale_bits, uint64_t rows,
         uint64_t cols, uint64_t begin, uint64_t end, OutArray out, int threads) {
        const QuantizedView v =
            PackedView(codes, scales, zeros, super_scales, bits, group_size, scheme, scale_storage,
                       scale_bits, rows, cols, "dequantize_rows");
        const nb::dlpack::dtype d = out.dtype();
        DType dt;
        if (d == nb::dtype<float>()) {
          dt = DType::kF32;
        } else if (d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Float) && d.bits == 16) {
          dt = DType::kF16;
        } else if (d.code == static_cast<uint8_t>(nb::dlpack::dtype_code::Bfloat) && d.bits == 16) {
          dt = DType::kBF16;
        } else {
          throw StatusError(Status(StatusCode::kInvalidArgument,
                                   "dequantize_rows: output must be float32, float16 or bfloat16"));
        }
        std::span<std::byte> o(static_cast<std::byte*>(out.data()), out.size() * out.itemsize());
        nb::gil_scoped_release release;
        ThrowIfError(DequantizeRows(v, begin, end, dt, o, QuantOptions{threads}));
      },
      nb::arg("codes"), nb::arg("scales"), nb::arg("zeros"), nb::arg("super_scales"),
      nb::arg("bits"), nb::arg("group_size"), nb::arg("scheme"), nb::arg("scale_storage"),
      nb::arg("scale_bits"), nb::arg("rows"), nb::arg("cols"), nb::arg("begin"), nb::arg("end"),
      nb::arg("out"), nb::arg("threads") = 1);
  m.def("recommended_spec", [](int bits) { return SpecDict(QuantSpec::Recommended(bits)); });
}

}  // namespace arrowquant::py
