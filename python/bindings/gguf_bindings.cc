// arrowquant._core's GGUF functions: block encoding/decoding, the file reader, whole-checkpoint
// export (arrowquant.gguf is the Python face).
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include "arrowquant/checkpoint.h"
#include "arrowquant/gguf.h"
#include "arrowquant/gptq.h"
#include "bindings.h"
#include "convert.h"
#include "progress.h"
#include "status_error.h"

namespace nb = nanobind;

namespace arrowquant::py {
namespace {

using InArray = nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu>;

GgufType TypeOf(const std::string& name) {
  return ValueOrThrow(ParseGgufType(name));
}

Grid GridOf(const std::string& method) {
  if (method == "search") return Grid::kSearch;
  if (method == "minmax") return Grid::kMinMax;
  throw StatusError(Status(StatusCode::kInvalidArgument,
                           "method must be 'search' or 'minmax', got '" + method + "'"));
}

// A new float32 array of `shape` owned by Python.
nb::ndarray<nb::numpy, float> NewF32(const std::vector<uint64_t>& shape, float** data) {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  float* buf = new float[n ? n : 1];
  nb::capsule owner(buf, [](void* p) noexcept { delete[] static_cast<float*>(p); });
  std::vector<size_t> s(shape.begin(), shape.end());
  *data = buf;
  return nb::ndarray<nb::numpy, float>(buf, s.size(), s.data(), owner);
}

nb::ndarray<nb::numpy, uint8_t> OwnBytes(std::vector<uint8_t>&& v) {
  auto* holder = new std::vector<uint8_t>(std::move(v));
  nb::capsule owner(holder, [](void* p) noexcept { delete static_cast<std::vector<uint8_t>*>(p); });
  const size_t shape[1] = {holder->size()};
  return nb::ndarray<nb::numpy, uint8_t>(holder->data(), 1, shape, owner);
}

nb::dict InfoDict(const GgufTensorInfo& t) {
  const GgufTypeInfo* info = FindGgufType(t.type);
  nb::dict d;
  d["name"] = t.name;
  d["type"] = std::string(info ? info->name : "?");
  d["type_id"] = t.type;
  d["shape"] = t.shape;
  d["nbytes"] = t.nbytes;
  d["offset"] = t.offset;
  return d;
}

nb::list ResultList(const std::vector<GgufExportResult>& results) {
  nb::list out;
  for (const GgufExportResult& e : results) {
    nb::dict d;
    d["source"] = e.source;
    d["name"] = e.name;
    d["type"] = std::string(GgufTypeName(e.type));
    d["shape"] = e.shape;
    d["source_dtype"] = e.source_dtype;
    d["source_bytes"] = e.source_bytes;
    d["stored_bytes"] = e.stored_bytes;
    d["metrics"] = MetricsDict(e.metrics);
    d["gptq"] = e.gptq;
    d["output_error"] = e.output_error ? nb::cast(*e.output_error) : nb::none();
    out.append(d);
  }
  return out;
}

std::vector<GgufKV> KVs(const std::vector<std::tuple<std::string, uint32_t, std::string>>& kv) {
  std::vector<GgufKV> out;
  for (const auto& [key, type, json] : kv) out.push_back({key, type, json});
  return out;
}

}  // namespace

void BindGguf(nb::module_& m) {
  m.def("gguf_types", [] {
    std::vector<std::tuple<std::string, uint32_t, uint32_t, uint32_t, double>> out;
    for (GgufType t : GgufCodecs()) {
      const GgufTypeInfo* i = FindGgufType(static_cast<uint32_t>(t));
      out.emplace_back(std::string(i->name), i->id, i->block, i->bytes, GgufBitsPerWeight(t));
    }
    return out;
  });
  m.def(
      "gguf_fits",
      [](const std::string& type, uint64_t ne0) { return GgufFits(TypeOf(type), ne0); },
      nb::arg("type"), nb::arg("ne0"));
  m.def(
      "gguf_encode",
      [](InArray a, const std::string& dtype, const std::string& name, const std::string& type,
         const std::string& method, int threads, std::shared_ptr<SecondMoments> moments,
         double damp) {
        TensorView v;
        v.name = name;
        v.dtype = ParseDType(dtype);
        for (size_t i = 0; i < a.ndim(); ++i) v.shape.push_back(a.shape(i));
        if (a.itemsize() != ElementBytes(v.dtype)) {
          throw StatusError(Status(StatusCode::kInvalidArgument,
                                   "tensor '" + name + "': array items do not match " + dtype));
        }
        v.data = {static_cast<const std::byte*>(a.data()), a.size() * a.itemsize()};
        const GgufType t = TypeOf(type);
        GgufEncodeOptions o;
        o.grid = GridOf(method);
        o.threads = threads;
        Result<GgufEncoded> r = Status();
        {
          nb::gil_scoped_release release;
          GptqOptions g;
          g.damp = damp;
          Status st;
          if (moments) {
            Result<std::shared_ptr<const GptqFactor>> f = FactorGptq(*moments, g);
            if (f.ok()) o.gptq = *f;
            st = f.status();
          }
          r = st.ok() ? GgufEncode(v, t, o) : Result<GgufEncoded>(st);
        }
        GgufEncoded e = ValueOrThrow(std::move(r));
        return nb::make_tuple(OwnBytes(std::move(e.bytes)), MetricsDict(e.metrics));
      },
      nb::arg("array"), nb::arg("dtype"), nb::arg("name"), nb::arg("type"),
      nb::arg("method") = "search", nb::arg("threads") = 1, nb::arg("moments").none() = nb::none(),
      nb::arg("damp") = 0.01,
      "w's blocks in type t and ggml's decoding's error; with `moments` (the layer's input "
      "second moments over a row), codes chosen by GPTQ for the output error.");
  m.def(
      "gguf_decode",
      [](const std::string& type, Bytes1D bytes, std::vector<uint64_t> shape, int threads) {
        float* out = nullptr;
        auto arr = NewF32(shape, &out);
        uint64_t n = 1;
        for (uint64_t d : shape) n *= d;
        const GgufType t = TypeOf(type);
        {
          nb::gil_scoped_release release;
          ThrowIfError(GgufDecode(t, {bytes.data(), bytes.size()}, n, out, threads));
        }
        return arr;
      },
      nb::arg("type"), nb::arg("bytes"), nb::arg("shape"), nb::arg("threads") = 1);

  nb::class_<GgufFile>(m, "GgufFile")
      .def_static(
          "open",
          [](const std::string& path) {
            nb::gil_scoped_release release;
            return ValueOrThrow(GgufFile::Open(path));
          },
          nb::arg("path"))
      .def_prop_ro("path", &GgufFile::path)
      .def_prop_ro("version", [](const GgufFile& f) { return f.header().version; })
      .def_prop_ro("alignment", [](const GgufFile& f) { return f.header().alignment; })
      .def_prop_ro("metadata",
                   [](const GgufFile& f) {
                     std::vector<std::tuple<std::string, uint32_t, std::string>> out;
                     const GgufHeader& h = f.header();
                     for (size_t i = 0; i < h.kv.size(); ++i) {
                       out.emplace_back(h.kv[i].first, h.kv_types[i], h.kv[i].second);
                     }
                     return out;
                   })
      .def_prop_ro("tensors",
                   [](const GgufFile& f) {
                     nb::list out;
                     for (const GgufTensorInfo& t : f.tensors()) out.append(InfoDict(t));
                     return out;
                   })
      .def(
          "raw",
          [](const GgufFile& f, const std::string& name) {
            const GgufTensorInfo* t = f.Find(name);
            if (t == nullptr) {
              throw StatusError(
                  Status(StatusCode::kNotFound, f.path() + ": no tensor '" + name + "'"));
            }
            const auto d = f.Data(*t);
            const size_t shape[1] = {d.size()};
            return nb::ndarray<nb::numpy, const uint8_t>(d.data(), 1, shape, nb::handle());
          },
          nb::arg("name"), nb::rv_policy::reference_internal)
      .def(
          "decode",
          [](const GgufFile& f, const std::string& name, int threads) {
            const GgufTensorInfo* t = f.Find(name);
            if (t == nullptr) {
              throw StatusError(
                  Status(StatusCode::kNotFound, f.path() + ": no tensor '" + name + "'"));
            }
            float* out = nullptr;
            auto arr = NewF32(t->shape, &out);
            {
              nb::gil_scoped_release release;
              ThrowIfError(f.Decode(*t, out, threads));
            }
            return arr;
          },
          nb::arg("name"), nb::arg("threads") = 1);

  m.def(
      "export_gguf",
      [](const std::string& model_path, const std::string& out_path,
         const std::vector<
             std::tuple<std::string, std::string, std::string, std::vector<uint64_t>>>& tensors,
         const std::vector<std::tuple<std::string, uint32_t, std::string>>& kv,
         const std::string& method, int threads, nb::object progress,
         const std::map<std::string, std::pair<std::shared_ptr<SecondMoments>,
                                               std::shared_ptr<SecondMoments>>>& moments,
         double damp) {
        std::vector<GgufExportTensor> items;
        for (const auto& [src, name, type, shape] : tensors) {
          GgufExportTensor t{src, name, TypeOf(type), shape};
          if (const auto it = moments.find(src); it != moments.end()) {
            t.fit = it->second.first;
            t.check = it->second.second;
            t.damp = damp;
          }
          items.push_back(std::move(t));
        }
        const std::vector<GgufKV> kvs = KVs(kv);
        GgufEncodeOptions o;
        o.grid = GridOf(method);
        o.threads = threads;
        ProgressBridge bridge(progress);
        GgufProgressFn fn = [&](uint64_t done, uint64_t total, const std::string& name) {
          return bridge(done, total, name);
        };
        Result<std::vector<GgufExportResult>> r = Status();
        {
          nb::gil_scoped_release release;
          auto ck = Checkpoint::Open(model_path);
          r = ck.ok() ? ExportGguf(**ck, out_path, items, kvs, o, fn)
                      : Result<std::vector<GgufExportResult>>(ck.status());
        }
        bridge.Rethrow();
        return ResultList(ValueOrThrow(std::move(r)));
      },
      nb::arg("model_path"), nb::arg("out_path"), nb::arg("tensors"), nb::arg("kv"),
      nb::arg("method") = "search", nb::arg("threads") = 1, nb::arg("progress").none() = nb::none(),
      nb::arg("moments") =
          std::map<std::string,
                   std::pair<std::shared_ptr<SecondMoments>, std::shared_ptr<SecondMoments>>>{},
      nb::arg("damp") = 0.01,
      "The checkpoint's tensors (source, name, type, stored shape) encoded into one GGUF file; "
      "tensors named in `moments` ({source: (fit, check or None)}) by GPTQ.");
  m.def(
      "export_model_gguf",
      [](const std::string& model_path, const std::string& out_path,
         const std::vector<std::tuple<std::string, uint32_t, std::string>>& kv) {
        Result<std::vector<GgufExportResult>> r = Status();
        {
          nb::gil_scoped_release release;
          r = ExportModelGguf(model_path, out_path, KVs(kv));
        }
        return ResultList(ValueOrThrow(std::move(r)));
      },
      nb::arg("model_path"), nb::arg("out_path"), nb::arg("kv"));
}

}  // namespace arrowquant::py
