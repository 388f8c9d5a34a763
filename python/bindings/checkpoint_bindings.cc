#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <memory>

#include "arrowquant/checkpoint.h"
#include "arrowquant/tensor_table.h"
#include "bindings.h"
#include "convert.h"
#include "status_error.h"

namespace nb = nanobind;

namespace arrowquant::py {
namespace {

// Shared so that every numpy view can keep the mappings alive after Python drops the
// checkpoint object itself.
struct PyCheckpoint {
  std::shared_ptr<const Checkpoint> ck;
};

const CheckpointTensor& Lookup(const PyCheckpoint& self, const std::string& name) {
  const CheckpointTensor* t = self.ck->Find(name);
  if (t == nullptr) {
    throw StatusError(
        Status(StatusCode::kNotFound, self.ck->path() + ": no tensor named '" + name + "'"));
  }
  return *t;
}

nb::object View(const PyCheckpoint& self, const std::string& name, bool raw) {
  const CheckpointTensor& t = Lookup(self, name);
  auto* keep = new std::shared_ptr<const Checkpoint>(self.ck);
  nb::capsule owner(
      keep, [](void* p) noexcept { delete static_cast<std::shared_ptr<const Checkpoint>*>(p); });
  const auto bytes = t.data();
  std::vector<size_t> shape;
  nb::dlpack::dtype dtype = nb::dtype<uint8_t>();
  if (raw) {
    shape.push_back(bytes.size());
  } else {
    shape.assign(t.info->shape.begin(), t.info->shape.end());
    dtype = NumpyStorage(t.info->dtype);
  }
  nb::ndarray<nb::numpy, nb::ro> arr(bytes.data(), shape.size(), shape.data(), owner, nullptr,
                                     dtype);
  return arr.cast();
}

nb::dict TensorDict(const CheckpointTensor& t) {
  nb::dict d;
  d["name"] = t.name;
  d["component"] = t.component;
  d["dtype"] = std::string(Traits(t.info->dtype).safetensors_name);
  d["shape"] = nb::cast(t.info->shape);
  d["nbytes"] = t.info->nbytes();
  d["file"] = t.file->path();
  d["offset"] = t.file->header().data_offset() + t.info->begin;
  return d;
}

}  // namespace

void BindCheckpoint(nb::module_& m) {
  nb::class_<PyCheckpoint>(m, "Checkpoint")
      .def_static(
          "open",
          [](const std::string& path, uint64_t max_header_bytes, uint64_t max_tensors,
             uint64_t max_tensor_bytes, uint64_t max_total_bytes) {
            ReaderLimits limits;
            limits.max_header_bytes = max_header_bytes;
            limits.max_tensors = max_tensors;
            limits.max_tensor_bytes = max_tensor_bytes;
            limits.max_total_bytes = max_total_bytes;
            // Unwinding out of this scope re-acquires the GIL before translation.
            nb::gil_scoped_release release;
            std::unique_ptr<Checkpoint> ck = ValueOrThrow(Checkpoint::Open(path, limits));
            return PyCheckpoint{std::shared_ptr<const Checkpoint>(std::move(ck))};
          },
          nb::arg("path"), nb::arg("max_header_bytes") = ReaderLimits{}.max_header_bytes,
          nb::arg("max_tensors") = ReaderLimits{}.max_tensors,
          nb::arg("max_tensor_bytes") = ReaderLimits{}.max_tensor_bytes,
          nb::arg("max_total_bytes") = ReaderLimits{}.max_total_bytes)
      .def_prop_ro("path", [](const PyCheckpoint& s) { return s.ck->path(); })
      .def_prop_ro(
          "layout",
          [](const PyCheckpoint& s) { return std::string(CheckpointLayoutName(s.ck->layout())); })
      .def_prop_ro("model_index_json",
                   [](const PyCheckpoint& s) { return s.ck->model_index_json(); })
      .def_prop_ro("total_tensor_bytes",
                   [](const PyCheckpoint& s) { return s.ck->total_tensor_bytes(); })
      .def("components",
           [](const PyCheckpoint& s) {
             nb::list out;
             for (const auto& c : s.ck->components()) {
               nb::dict d;
               d["name"] = c.name;
               d["library"] = c.library;
               d["class_name"] = c.class_name;
               d["folder"] = c.folder;
               d["config_json"] = c.config_json;
               nb::list files;
               for (const auto& f : c.files) {
                 nb::dict fd;
                 fd["path"] = f->path();
                 fd["metadata"] = nb::cast(f->metadata());
                 fd["file_size"] = f->file_size();
                 files.append(fd);
               }
               d["files"] = files;
               out.append(d);
             }
             return out;
           })
      .def_prop_ro(
          "naming",
          [](const PyCheckpoint& s) {
            const Naming& n = s.ck->naming();
            nb::dict d;
            d["layout"] = n.layout;
            d["why"] = n.why;
            nb::list comps;
            for (const NamingComponent& c : n.components) {
              nb::dict cd;
              cd["name"] = c.name;
              cd["prefix"] = c.prefix;
              cd["kind"] = c.kind;
              comps.append(cd);
            }
            d["components"] = comps;
            return d;
          },
          "How a lone model names its tensors: layout (diffusers, ldm, ldm-sdxl, flux, sd3), "
          "why, and its components by prefix")
      .def("tensors",
           [](const PyCheckpoint& s) {
             nb::list out;
             for (const auto& t : s.ck->tensors()) out.append(TensorDict(t));
             return out;
           })
      .def("info", [](const PyCheckpoint& s,
                      const std::string& name) { return TensorDict(Lookup(s, name)); })
      .def("__contains__", [](const PyCheckpoint& s,
                              const std::string& name) { return s.ck->Find(name) != nullptr; })
      .def("__len__", [](const PyCheckpoint& s) { return s.ck->tensors().size(); })
      .def(
          "array",
          [](const PyCheckpoint& s, const std::string& name) { return View(s, name, false); },
          nb::arg("name"), "Zero-copy read-only view (bf16/f8 as raw unsigned integers).")
      .def(
          "raw", [](const PyCheckpoint& s, const std::string& name) { return View(s, name, true); },
          nb::arg("name"), "The tensor's bytes as a zero-copy read-only uint8 view.")
      .def(
          "write_tensor_table",
          [](const PyCheckpoint& s, const std::string& out) {
            Status st;
            {
              nb::gil_scoped_release release;
              st = WriteTensorTable(*s.ck, out);
            }
            ThrowIfError(st);
          },
          nb::arg("path"));
}

}  // namespace arrowquant::py
