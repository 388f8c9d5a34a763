#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "arrowquant/model_file.h"
#include "bindings.h"
#include "convert.h"
#include "status_error.h"

namespace nb = nanobind;

namespace arrowquant::py {
namespace {

using InArray = nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu>;

// Owns a heap buffer until numpy is done with it.
nb::object OwnedArray(std::byte* buf, const std::vector<uint64_t>& shape, DType dtype) {
  nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<std::byte*>(p); });
  std::vector<size_t> s(shape.begin(), shape.end());
  return nb::ndarray<nb::numpy>(buf, s.size(), s.data(), owner, nullptr, NumpyStorage(dtype))
      .cast();
}

nb::dict InfoDict(const ModelTensorInfo& t) {
  nb::dict d;
  d["name"] = t.name;
  d["component"] = t.component;
  d["shape"] = nb::cast(t.shape);
  d["dtype"] = t.source_dtype;
  d["quant_type"] = t.quant_type;
  d["num_params"] = t.num_params;
  d["rows"] = t.rows.size();
  d["spec"] = t.spec ? nb::object(SpecDict(*t.spec)) : nb::none();
  if (t.metrics) {
    nb::dict m;
    m["cosine"] = t.metrics->cosine;
    m["sqnr_db"] = t.metrics->sqnr_db;
    m["rel_rmse"] = t.metrics->rel_rmse;
    d["metrics"] = m;
  } else {
    d["metrics"] = nb::none();
  }
  if (t.time_aware) {
    nb::dict m;
    m["num_groups"] = t.time_aware->num_groups;
    m["group_bounds"] = nb::cast(t.time_aware->group_bounds);
    m["act_bits"] = t.time_aware->act_bits;
    m["act_scales"] = nb::cast(t.time_aware->act_scales);
    m["act_zero_points"] = nb::cast(t.time_aware->act_zero_points);
    d["time_aware"] = m;
  } else {
    d["time_aware"] = nb::none();
  }
  if (t.spatial) {
    nb::dict m;
    m["equalization_scales"] = nb::cast(t.spatial->equalization_scales);
    m["smoothing_alpha"] = t.spatial->smoothing_alpha;
    d["spatial"] = m;
  } else {
    d["spatial"] = nb::none();
  }
  if (t.activation_stats) {
    nb::dict m;
    m["min"] = nb::cast(t.activation_stats->min);
    m["max"] = nb::cast(t.activation_stats->max);
    m["absmax"] = nb::cast(t.activation_stats->absmax);
    d["activation_stats"] = m;
  } else {
    d["activation_stats"] = nb::none();
  }
  return d;
}

struct PyReader {
  std::shared_ptr<ModelReader> r;
};
struct PyWriter {
  std::unique_ptr<ModelWriter> w;
};

}  // namespace

void BindModelFile(nb::module_& m) {
  m.attr("MODEL_FILE_NAME") = kModelFileName;
  m.def(
      "resolve_model_path",
      [](const std::string& path) { return ValueOrThrow(ResolveModelPath(path)); }, nb::arg("path"),
      "The model file of a path: the file itself, or model.aq.parquet in the folder that "
      "`arrowquant quantize` wrote.");
  nb::class_<PyWriter>(m, "ModelWriter")
      .def_static(
          "open",
          [](const std::string& path, const std::string& tool_version,
             const std::string& recipe_json, const std::string& source_json,
             const std::string& modality, bool is_diffusion,
             const std::map<std::string, std::string>& extra, uint64_t max_chunk_bytes) {
            ModelMetadata meta{tool_version, recipe_json,  source_json,
                               modality,     is_diffusion, extra};
            return PyWriter{
                ValueOrThrow(ModelWriter::Open(path, meta, ModelWriterOptions{max_chunk_bytes}))};
          },
          nb::arg("path"), nb::arg("tool_version"), nb::arg("recipe_json"), nb::arg("source_json"),
          nb::arg("modality"), nb::arg("is_diffusion_model"), nb::arg("extra"),
          nb::arg("max_chunk_bytes") = ModelWriterOptions{}.max_chunk_bytes)
      .def(
          "write_quantized",
          [](PyWriter& self, const std::string& name, const std::string& component,
             const QuantizedTensor& q, std::optional<std::map<std::string, double>> metrics) {
            TensorRecord r;
            r.name = name;
            r.component = component;
            r.quantized = &q;
            if (metrics) {
              ErrorMetrics e;
              e.cosine = metrics->at("cosine");
              e.sqnr_db = metrics->at("sqnr_db");
              e.rel_rmse = metrics->at("rel_rmse");
              r.metrics = e;
            }
            nb::gil_scoped_release release;
            ThrowIfError(self.w->Write(r));
          },
          nb::arg("name"), nb::arg("component"), nb::arg("tensor"), nb::arg("metrics") = nb::none())
      .def(
          "write_raw",
          [](PyWriter& self, const std::string& name, const std::string& component, InArray a,
             const std::string& dtype) {
            TensorRecord r;
            r.name = name;
            r.component = component;
            r.raw_dtype = ParseDType(dtype);
            for (size_t i = 0; i < a.ndim(); ++i) r.raw_shape.push_back(a.shape(i));
            r.raw = {static_cast<const std::byte*>(a.data()), a.size() * a.itemsize()};
            nb::gil_scoped_release release;
            ThrowIfError(self.w->Write(r));
          },
          nb::arg("name"), nb::arg("component"), nb::arg("array"), nb::arg("dtype"))
      .def("close",
           [](PyWriter& self) {
             nb::gil_scoped_release release;
             ThrowIfError(self.w->Close());
           })
      .def("abort", [](PyWriter& self) { self.w->Abort(); });

  nb::class_<PyReader>(m, "ModelReader")
      .def_static(
          "open",
          [](const std::string& path, bool verify_checksums) {
            nb::gil_scoped_release release;
            return PyReader{std::shared_ptr<ModelReader>(
                ValueOrThrow(ModelReader::Open(path, ModelReaderOptions{verify_checksums})))};
          },
          nb::arg("path"), nb::arg("verify_checksums") = true)
      .def_prop_ro("path", [](const PyReader& s) { return s.r->path(); })
      .def_prop_ro(
          "files", [](const PyReader& s) { return s.r->files(); },
          "The files read: the model file, or a dataset's files in order.")
      .def_prop_ro("legacy", [](const PyReader& s) { return s.r->legacy(); })
      .def_prop_ro("metadata", [](const PyReader& s) { return s.r->metadata(); })
      .def("tensors",
           [](const PyReader& s) {
             nb::list out;
             for (const auto& t : s.r->tensors()) out.append(InfoDict(t));
             return out;
           })
      .def("read_quantized",
           [](const PyReader& s, const std::string& name) {
             nb::gil_scoped_release release;
             return ValueOrThrow(s.r->ReadQuantized(name));
           })
      .def("read_raw",
           [](const PyReader& s, const std::string& name) {
             std::vector<std::byte> bytes;
             const ModelTensorInfo* t = s.r->Find(name);
             {
               nb::gil_scoped_release release;
               bytes = ValueOrThrow(s.r->ReadRaw(name));
             }
             auto* buf = new std::byte[std::max<size_t>(1, bytes.size())];
             std::memcpy(buf, bytes.data(), bytes.size());
             return OwnedArray(buf, t->shape, t->raw_dtype);
           })
      .def(
          "load",
          [](const PyReader& s, const std::vector<std::string>& names, const std::string& dtype,
             int threads, bool as_stored) {
            // New arrays (integer and bool tensors in their own dtype), filled by
            // ModelReader::Load with the GIL released.
            const DType dt = ParseDType(dtype);
            std::vector<LoadRequest> requests;
            std::vector<std::unique_ptr<std::byte[]>> bufs;
            std::vector<const ModelTensorInfo*> infos;
            for (const auto& n : names) {
              const ModelTensorInfo* t = s.r->Find(n);
              if (!t) {
                throw StatusError(
                    Status(StatusCode::kNotFound, s.r->path() + ": no tensor named '" + n + "'"));
              }
              const bool own = t->quant_type == "raw" && !Traits(t->raw_dtype).quantizable;
              const DType out = own ? t->raw_dtype : dt;
              const size_t bytes = t->num_params * ElementBytes(out);
              bufs.emplace_back(new std::byte[std::max<size_t>(1, bytes)]);
              requests.push_back({n, out, {bufs.back().get(), bytes}});
              infos.push_back(t);
            }
            {
              nb::gil_scoped_release release;
              ThrowIfError(s.r->Load(requests, threads, as_stored));
            }
            nb::list out;
            for (size_t i = 0; i < infos.size(); ++i) {
              out.append(OwnedArray(bufs[i].release(), infos[i]->shape, requests[i].dtype));
            }
            return out;
          },
          nb::arg("names"), nb::arg("dtype"), nb::arg("threads") = 1, nb::arg("as_stored") = false)
      .def(
          "load_into",
          [](const PyReader& s, const std::vector<std::string>& names,
             std::vector<nb::ndarray<nb::c_contig, nb::device::cpu>> outs, const std::string& dtype,
             int threads, bool as_stored) {
            // Straight into existing buffers (a model's parameters), GIL released.
            const DType dt = ParseDType(dtype);
            if (names.size() != outs.size()) {
              throw StatusError(
                  Status(StatusCode::kInvalidArgument, "names and outputs differ in length"));
            }
            std::vector<LoadRequest> requests;
            for (size_t i = 0; i < names.size(); ++i) {
              if (outs[i].itemsize() != ElementBytes(dt)) {
                throw StatusError(Status(StatusCode::kSizeMismatch,
                                         "tensor '" + names[i] + "': destination items are " +
                                             std::to_string(outs[i].itemsize()) + " bytes, " +
                                             dtype + " needs " + std::to_string(ElementBytes(dt))));
              }
              requests.push_back(
                  {names[i],
                   dt,
                   {static_cast<std::byte*>(outs[i].data()), outs[i].size() * outs[i].itemsize()}});
            }
            nb::gil_scoped_release release;
            ThrowIfError(s.r->Load(requests, threads, as_stored));
          },
          nb::arg("names"), nb::arg("outputs"), nb::arg("dtype"), nb::arg("threads") = 1,
          nb::arg("as_stored") = false);
}

}  // namespace arrowquant::py
