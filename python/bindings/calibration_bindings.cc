// arrowquant._core: calibration statistics, time groups, equalization (calibration.h).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include "arrowquant/calibration.h"
#include "arrowquant/gptq.h"
#include "bindings.h"
#include "convert.h"
#include "status_error.h"

namespace nb = nanobind;

namespace arrowquant::py {
namespace {

template <typename T>
nb::ndarray<nb::numpy, T> ToNumpy(const std::vector<T>& v) {
  auto* buf = new std::vector<T>(v);
  nb::capsule owner(buf, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  const size_t shape[1] = {buf->size()};
  return nb::ndarray<nb::numpy, T>(buf->data(), 1, shape, owner);
}

// An owned f32 copy with the given shape (numpy frees it).
nb::ndarray<nb::numpy, float> ToNumpyShaped(std::vector<float> v,
                                            const std::vector<size_t>& shape) {
  auto* buf = new std::vector<float>(std::move(v));
  nb::capsule owner(buf, [](void* p) noexcept { delete static_cast<std::vector<float>*>(p); });
  return nb::ndarray<nb::numpy, float>(buf->data(), shape.size(), shape.data(), owner);
}

template <typename T>
std::vector<T> FromNumpy(
    const nb::ndarray<const T, nb::ndim<1>, nb::c_contig, nb::device::cpu>& a) {
  return std::vector<T>(a.data(), a.data() + a.shape(0));
}

ClipMethod ParseClip(const std::string& s) {
  if (s == "minmax") return ClipMethod::kMinMax;
  if (s == "percentile") return ClipMethod::kPercentile;
  if (s == "mse") return ClipMethod::kMse;
  throw StatusError(Status(StatusCode::kInvalidArgument,
                           "clip method must be minmax, percentile or mse, got '" + s + "'"));
}

nb::dict TimeAwareDict(const TimeAwareParams& p) {
  nb::dict d;
  d["num_groups"] = p.num_groups;
  d["group_bounds"] = nb::cast(p.group_bounds);
  d["act_bits"] = p.act_bits;
  d["act_scales"] = nb::cast(p.act_scales);
  d["act_zero_points"] = nb::cast(p.act_zero_points);
  return d;
}

}  // namespace

void BindCalibration(nb::module_& m) {
  using F32In = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
  using U64In = nb::ndarray<const uint64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
  nb::class_<ActivationCollector>(m, "ActivationCollector")
      .def_static(
          "make",
          [](uint64_t channels) { return ValueOrThrow(ActivationCollector::Make(channels)); },
          nb::arg("channels"))
      .def_prop_ro("channels", &ActivationCollector::channels)
      .def(
          "add",
          [](ActivationCollector& c, int32_t t,
             nb::ndarray<const float, nb::c_contig, nb::device::cpu> x, uint64_t outer,
             uint64_t channels, uint64_t inner, int threads) {
            // Reads the tensor's memory in place (a torch CPU tensor's numpy view): no copy.
            Status st;
            {
              nb::gil_scoped_release release;
              st = c.Add(t, {x.data(), x.size()}, {outer, channels, inner}, threads);
            }
            ThrowIfError(st);
          },
          nb::arg("timestep"), nb::arg("values"), nb::arg("outer"), nb::arg("channels"),
          nb::arg("inner"), nb::arg("threads") = 1)
      .def(
          "merge",
          [](ActivationCollector& c, int32_t t, uint64_t count, const F32In& mn, const F32In& mx,
             const F32In& amax, const U64In& hist) {
            TimestepActivationStats s{
                t, count, FromNumpy(mn), FromNumpy(mx), FromNumpy(amax), FromNumpy(hist)};
            ThrowIfError(c.Merge(s));
          },
          nb::arg("timestep"), nb::arg("count"), nb::arg("min"), nb::arg("max"), nb::arg("absmax"),
          nb::arg("histogram"))
      .def("stats",
           [](const ActivationCollector& c) {
             nb::list out;
             for (const auto& [t, s] : c.by_timestep()) {
               nb::dict d;
               d["timestep"] = t;
               d["count"] = s.count;
               d["min"] = ToNumpy(s.channel_min);
               d["max"] = ToNumpy(s.channel_max);
               d["absmax"] = ToNumpy(s.channel_absmax);
               d["histogram"] = ToNumpy(s.histogram);
               out.append(d);
             }
             return out;
           })
      .def("overall", [](const ActivationCollector& c) {
        const ActivationStats s = c.Overall();
        nb::dict d;
        d["min"] = ToNumpy(s.min);
        d["max"] = ToNumpy(s.max);
        d["absmax"] = ToNumpy(s.absmax);
        return d;
      });

  m.def(
      "fit_time_groups",
      [](const ActivationCollector& c, int groups, bool adaptive, int act_bits,
         const std::string& clip, double percentile, int32_t num_train_timesteps) {
        TimeGroupingOptions o;
        o.groups = groups;
        o.adaptive = adaptive;
        o.act_bits = act_bits;
        o.clip = ParseClip(clip);
        o.percentile = percentile;
        o.num_train_timesteps = num_train_timesteps;
        Result<TimeAwareParams> r = Status();
        {
          nb::gil_scoped_release release;
          r = FitTimeGroups(c, o);
        }
        return TimeAwareDict(ValueOrThrow(std::move(r)));
      },
      nb::arg("collector"), nb::arg("groups"), nb::arg("adaptive"), nb::arg("act_bits"),
      nb::arg("clip") = "mse", nb::arg("percentile") = 99.99,
      nb::arg("num_train_timesteps") = 1000);
  m.def(
      "expected_act_error",
      [](const U64In& hist, float scale, int32_t zero_point, int bits) {
        if (hist.shape(0) != static_cast<size_t>(ActivationHistogram::kNumBins)) {
          throw StatusError(Status(StatusCode::kInvalidArgument, "histogram has the wrong size"));
        }
        return ExpectedSquaredError({hist.data(), hist.shape(0)}, {scale, zero_point}, bits);
      },
      nb::arg("histogram"), nb::arg("scale"), nb::arg("zero_point"), nb::arg("bits"));
  m.def(
      "equalization_scales",
      [](const F32In& w, const F32In& x, double alpha) {
        return ToNumpy(ValueOrThrow(
            EqualizationScales({w.data(), w.shape(0)}, {x.data(), x.shape(0)}, alpha)));
      },
      nb::arg("weight_absmax"), nb::arg("act_absmax"), nb::arg("alpha") = 0.5);
  m.def(
      "input_channel_absmax",
      [](nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu> w, const std::string& dtype,
         const std::string& name) {
        std::vector<uint64_t> shape(w.ndim());
        for (size_t i = 0; i < w.ndim(); ++i) shape[i] = w.shape(i);
        const TensorView v{
            name, ParseDType(dtype), shape, {static_cast<const std::byte*>(w.data()), w.nbytes()}};
        Result<std::vector<float>> r = Status();
        {
          nb::gil_scoped_release release;
          r = InputChannelAbsMax(v);
        }
        return ToNumpy(ValueOrThrow(std::move(r)));
      },
      nb::arg("weight"), nb::arg("dtype"), nb::arg("name") = "weight");
  m.def(
      "scale_input_channels",
      [](nb::ndarray<const float, nb::c_contig, nb::device::cpu> w, const F32In& s, bool divide,
         const std::string& name) {
        std::vector<uint64_t> shape(w.ndim());
        std::vector<size_t> out_shape(w.ndim());
        for (size_t i = 0; i < w.ndim(); ++i) shape[i] = out_shape[i] = w.shape(i);
        std::vector<float> values(w.data(), w.data() + w.size());
        Status st;
        {
          nb::gil_scoped_release release;
          st = ScaleInputChannels(values, shape, {s.data(), s.shape(0)},
                                  divide ? Equalize::kDivide : Equalize::kMultiply, name);
        }
        ThrowIfError(st);
        return ToNumpyShaped(std::move(values), out_shape);
      },
      nb::arg("weight"), nb::arg("scales"), nb::arg("divide") = true, nb::arg("name") = "weight",
      "A copy of an f32 weight [out, in, ...] as W / s (divide, how equalized weights are stored) "
      "or W * s along the input-channel axis; every kernel position of channel i shares s_i.");
  nb::class_<SecondMoments>(m, "SecondMoments",
                            "H = sum x x^T of a layer's inputs (block-diagonal, f64, upper "
                            "triangles packed row by row): GPTQ's input")
      .def_static(
          "make",
          [](uint64_t dim, uint64_t block) {
            return std::shared_ptr<SecondMoments>(ValueOrThrow(SecondMoments::Make(dim, block)));
          },
          nb::arg("dim"), nb::arg("block") = 0)
      .def(
          "add",
          [](SecondMoments& h,
             nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu> x, int threads) {
            Status st;
            {
              nb::gil_scoped_release release;
              st = h.Add({x.data(), x.size()}, x.shape(0), threads);
            }
            ThrowIfError(st);
          },
          nb::arg("rows"), nb::arg("threads") = 1, "Adds rows [n, dim] (float32).")
      .def("merge", [](SecondMoments& h, const SecondMoments& o) { ThrowIfError(h.Merge(o)); })
      .def_prop_ro("dim", &SecondMoments::dim)
      .def_prop_ro("block", &SecondMoments::block)
      .def_prop_ro("count", &SecondMoments::count)
      .def("data",
           [](const SecondMoments& h) {
             return ToNumpy(std::vector<double>(h.data().begin(), h.data().end()));
           })
      .def(
          "diagonal",
          [](const SecondMoments& h) {
            std::vector<double> d;
            d.reserve(h.dim());
            for (uint64_t b = 0; b < h.num_blocks(); ++b) {
              for (uint64_t i = 0; i < h.BlockSize(b); ++i) d.push_back(h.UpperRow(b, i)[0]);
            }
            return ToNumpy(std::move(d));
          },
          "H's diagonal: each input's energy (what GGUF calls an importance matrix)")
      .def(
          "restore",
          [](SecondMoments& h,
             const nb::ndarray<const double, nb::ndim<1>, nb::c_contig, nb::device::cpu>& data,
             uint64_t count) {
            ThrowIfError(h.Restore({data.data(), data.shape(0)}, count));
          },
          nb::arg("data"), nb::arg("count"));
  nb::dict h;
  h["bins_per_octave"] = ActivationHistogram::kBinsPerOctave;
  h["min_exponent"] = ActivationHistogram::kMinExponent;
  h["max_exponent"] = ActivationHistogram::kMaxExponent;
  h["num_bins"] = ActivationHistogram::kNumBins;
  h["zero_bin"] = ActivationHistogram::kZeroBin;
  m.attr("HISTOGRAM") = h;
  std::vector<double> values(ActivationHistogram::kNumBins);
  for (int b = 0; b < ActivationHistogram::kNumBins; ++b)
    values[b] = ActivationHistogram::BinValue(b);
  m.attr("HISTOGRAM_BIN_VALUES") = ToNumpy(values);
}

}  // namespace arrowquant::py
