#include <nanobind/nanobind.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include "arrowquant/pipeline.h"
#include "bindings.h"
#include "convert.h"
#include "progress.h"
#include "status_error.h"

namespace nb = nanobind;

namespace arrowquant::py {
namespace {

nb::dict LayerDict(const LayerReport& l) {
  nb::dict d;
  d["name"] = l.name;
  d["component"] = l.component;
  d["shape"] = nb::cast(l.shape);
  d["source_dtype"] = l.source_dtype;
  d["action"] = l.action;
  d["format"] = l.format;
  d["bits"] = l.bits;
  d["why"] = l.why;
  d["fallbacks"] = nb::cast(l.fallbacks);
  d["method"] = l.method;
  d["validation"] = l.validation;
  d["output_error"] = l.output_error ? nb::cast(*l.output_error) : nb::none();
  d["source_bytes"] = l.source_bytes;
  d["stored_bytes"] = l.stored_bytes;
  if (l.metrics) {
    nb::dict m;
    m["rel_rmse"] = l.metrics->rel_rmse;
    m["sqnr_db"] = l.metrics->sqnr_db;
    m["cosine"] = l.metrics->cosine;
    m["max_abs"] = l.metrics->max_abs;
    m["mse"] = l.metrics->mse;
    d["metrics"] = m;
  } else {
    d["metrics"] = nb::none();
  }
  return d;
}

template <typename T>
std::vector<T> Vec(nb::handle d, const char* key) {
  return nb::cast<std::vector<T>>(d[key]);
}

// {name: {"time_aware": {...} | None, "equalization_scales": [...] | None, "smoothing_alpha": a,
//         "stats": {"min","max","absmax"} | None}} as produced by arrowquant.calibration.
std::map<std::string, ActivationPlan> ParseActivationPlans(nb::dict plans) {
  std::map<std::string, ActivationPlan> out;
  for (auto [k, v] : plans) {
    ActivationPlan p;
    nb::dict d = nb::cast<nb::dict>(v);
    if (d.contains("time_aware") && !d["time_aware"].is_none()) {
      nb::handle t = d["time_aware"];
      TimeAwareParams ta;
      ta.group_bounds = Vec<int32_t>(t, "group_bounds");
      ta.act_scales = Vec<float>(t, "act_scales");
      ta.act_zero_points = Vec<int32_t>(t, "act_zero_points");
      ta.act_bits = nb::cast<int32_t>(t["act_bits"]);
      ta.num_groups = static_cast<int32_t>(ta.act_scales.size());
      p.time_aware = std::move(ta);
    }
    if (d.contains("equalization_scales") && !d["equalization_scales"].is_none()) {
      SpatialParams sp;
      sp.equalization_scales = Vec<float>(d, "equalization_scales");
      if (d.contains("smoothing_alpha")) sp.smoothing_alpha = nb::cast<float>(d["smoothing_alpha"]);
      p.spatial = std::move(sp);
    }
    if (d.contains("stats") && !d["stats"].is_none()) {
      nb::handle s = d["stats"];
      p.stats =
          ActivationStats{Vec<float>(s, "min"), Vec<float>(s, "max"), Vec<float>(s, "absmax")};
    }
    out.emplace(nb::cast<std::string>(k), std::move(p));
  }
  return out;
}

nb::dict ReportDict(const PipelineReport& rep) {
  nb::dict d;
  d["modality"] = rep.modality;
  d["modality_reason"] = rep.modality_reason;
  nb::list layers;
  for (const auto& l : rep.layers) layers.append(LayerDict(l));
  d["layers"] = layers;
  d["source_bytes"] = rep.source_bytes;
  d["stored_bytes"] = rep.stored_bytes;
  d["quantized_params"] = rep.quantized_params;
  d["total_params"] = rep.total_params;
  d["threshold_missed"] = rep.threshold_missed;
  d["budget_note"] = rep.budget_note;
  return d;
}

using RuleTuple = std::tuple<std::string, int, std::string>;
using LimitTuple = std::tuple<uint64_t, uint64_t, uint64_t, uint64_t>;

void BindConfig(nb::module_& m) {
  nb::class_<PipelineConfig>(m, "PipelineConfig",
                             "The C++ pipeline's configuration (arrowquant.DiffusionQuantConfig."
                             "to_core() builds it).")
      .def(nb::init<>())
      .def_rw("bits", &PipelineConfig::bits)
      .def_rw("max_rel_rmse", &PipelineConfig::max_rel_rmse)
      .def_rw("modality", &PipelineConfig::modality)
      .def_rw("threads", &PipelineConfig::threads)
      .def_rw("min_elements", &PipelineConfig::min_elements)
      .def_rw("fail_fast", &PipelineConfig::fail_fast)
      .def_rw("keep_nonfinite", &PipelineConfig::keep_nonfinite)
      .def_rw("target_bpw", &PipelineConfig::target_bpw)
      .def_rw("allocate", &PipelineConfig::allocate)
      .def_rw("recipe_json", &PipelineConfig::recipe_json)
      .def_rw("tool_version", &PipelineConfig::tool_version)
      .def_rw("max_file_bytes", &PipelineConfig::max_file_bytes,
              "> 0: a Parquet dataset of files of at most this many payload bytes")
      .def_prop_rw(
          "keep_dtype",
          [](const PipelineConfig& c) {
            return std::string(Traits(c.keep_dtype).safetensors_name);
          },
          [](PipelineConfig& c, const std::string& d) { c.keep_dtype = ParseDType(d); })
      .def_prop_rw(
          "rules",
          [](const PipelineConfig& c) {
            std::vector<RuleTuple> out;
            for (const auto& r : c.rules) out.emplace_back(r.pattern, r.bits, r.why);
            return out;
          },
          [](PipelineConfig& c, const std::vector<RuleTuple>& rules) {
            c.rules.clear();
            for (const auto& [p, b, why] : rules) c.rules.push_back({p, b, why});
          },
          "(regex, bits, why): bits 2/3/4/8, 0 = keep; first match wins, before the defaults")
      .def(
          "set_spec",
          [](PipelineConfig& c, int group_size, const std::string& scheme,
             const std::string& method, const std::string& scale_dtype) {
            c.spec = ValueOrThrow(
                QuantSpec::FromFields(c.bits, group_size, scheme, method, scale_dtype));
          },
          nb::arg("group_size"), nb::arg("scheme"), nb::arg("method"), nb::arg("scale_dtype"))
      .def(
          "spec_for", [](const PipelineConfig& c, int bits) { return SpecDict(c.SpecFor(bits)); },
          nb::arg("bits"), "The format a layer gets at `bits` (what the pipeline quantizes with).")
      .def(
          "set_component",
          [](PipelineConfig& c, const std::string& name, const PipelineConfig& own) {
            c.components[name] = {own.bits, own.spec, own.max_rel_rmse, own.target_bpw,
                                  own.allocate};
          },
          nb::arg("name"), nb::arg("own"),
          "Component `name` (a pipeline folder's subfolder) takes `own`'s width, format, "
          "threshold and size budget instead of this config's.")
      .def(
          "keep_component",
          [](PipelineConfig& c, const std::string& name) { c.components[name].keep = true; },
          nb::arg("name"), "Component `name` stays unquantized (NAME=keep).")
      .def_prop_ro(
          "components",
          [](const PipelineConfig& c) {
            std::vector<std::string> out;
            for (const auto& [name, _] : c.components) out.push_back(name);
            return out;
          },
          "Names of the components with their own settings.")
      .def_rw("gptq_damp", &PipelineConfig::gptq_damp)
      .def_rw("gptq_act_order", &PipelineConfig::gptq_act_order)
      .def(
          "set_moments",
          [](PipelineConfig& c,
             const std::map<std::string, std::pair<std::shared_ptr<SecondMoments>,
                                                   std::shared_ptr<SecondMoments>>>& moments) {
            c.moments.clear();
            for (const auto& [name, fc] : moments) c.moments[name] = {fc.first, fc.second};
          },
          nb::arg("moments"),
          "{weight name: (fit, check)}: GPTQ on `fit`, output-error validation on `check` "
          "(held-out rows; None: weight error)")
      .def(
          "set_sensitivity",
          [](PipelineConfig& c, const std::map<std::string, std::vector<double>>& sensitivity) {
            for (auto& [name, lm] : c.moments) {
              const auto it = sensitivity.find(name);
              lm.sensitivity = it == sensitivity.end() ? std::vector<double>{} : it->second;
            }
          },
          nb::arg("sensitivity"),
          "{weight name: one value per output row}: the layers' measured contribution weights "
          "to the one-step error (LayerMoments::sensitivity); call after set_moments")
      .def(
          "set_activations",
          [](PipelineConfig& c, nb::dict plans) { c.activations = ParseActivationPlans(plans); },
          nb::arg("plans"))
      .def(
          "set_budget",
          [](PipelineConfig& c, const std::map<std::string, std::pair<int, double>>& widths,
             const std::string& note) {
            JobBudget b{{}, note};
            for (const auto& [name, w] : widths) b.widths[name] = {w.first, w.second};
            c.budget = std::move(b);
          },
          nb::arg("widths"), nb::arg("note"),
          "The job's size budgets as assign_budgets returned them: a part uses them as they are.")
      .def_prop_rw(
          "part", [](const PipelineConfig& c) { return std::make_pair(c.part_begin, c.part_end); },
          [](PipelineConfig& c, std::pair<size_t, size_t> p) {
            std::tie(c.part_begin, c.part_end) = p;
          },
          "(begin, end): the tensors this run quantizes and writes, in checkpoint order");
}

}  // namespace

void BindPipeline(nb::module_& m) {
  BindConfig(m);
  m.def(
      "run_pipeline",
      [](const std::string& model_path, const std::string& out_path, const PipelineConfig& config,
         nb::object progress, LimitTuple limits) {
        ReaderLimits lim;
        std::tie(lim.max_header_bytes, lim.max_tensors, lim.max_tensor_bytes, lim.max_total_bytes) =
            limits;
        ProgressBridge bridge(progress);
        ProgressFn fn = [&](uint64_t done, uint64_t total, const std::string& name) {
          return bridge(done, total, name);
        };
        Result<PipelineReport> rep = Status();
        {
          nb::gil_scoped_release release;
          auto ck = Checkpoint::Open(model_path, lim);
          if (!ck.ok())
            rep = ck.status();
          else
            rep = RunPipeline(**ck, out_path, config, fn);
        }
        bridge.Rethrow();
        if (!rep.ok()) throw StatusError(rep.status());
        return ReportDict(*rep);
      },
      nb::arg("model_path"), nb::arg("out_path"), nb::arg("config"), nb::arg("progress").none(),
      nb::arg("limits") =
          std::make_tuple(ReaderLimits{}.max_header_bytes, ReaderLimits{}.max_tensors,
                          ReaderLimits{}.max_tensor_bytes, ReaderLimits{}.max_total_bytes));
  m.def(
      "assign_budgets",
      [](const std::string& model_path, const PipelineConfig& config) {
        std::map<std::string, std::pair<int, double>> widths;
        std::string note;
        {
          nb::gil_scoped_release release;
          auto ck = ValueOrThrow(Checkpoint::Open(model_path));
          JobBudget b = ValueOrThrow(AssignBudgets(*ck, config));
          for (const auto& [name, w] : b.widths) widths[name] = {w.bits, w.output_error};
          note = std::move(b.note);
        }
        return std::make_pair(widths, note);
      },
      nb::arg("model_path"), nb::arg("config"),
      "({tensor: (bits, output error)}, note): the job's size budgets, computed once for a job "
      "run in parts (PipelineConfig.set_budget).");
  nb::class_<PartMerger>(m, "PartMerger",
                         "A job's model file written from its parts' files, appended in tensor "
                         "order as they are ready (C++ PartMerger); nothing is left unless "
                         "close() succeeds.")
      .def_static(
          "open",
          [](const std::string& model_path, const std::string& out_path,
             const PipelineConfig& config, const std::string& modality) {
            nb::gil_scoped_release release;
            auto ck = ValueOrThrow(Checkpoint::Open(model_path));
            return ValueOrThrow(PartMerger::Open(*ck, out_path, config, modality));
          },
          nb::arg("model_path"), nb::arg("out_path"), nb::arg("config"), nb::arg("modality"))
      .def(
          "append",
          [](PartMerger& merger, const std::string& part) {
            Status st;
            {
              nb::gil_scoped_release release;
              st = merger.Append(part);
            }
            ThrowIfError(st);
          },
          nb::arg("part"))
      .def("close", [](PartMerger& merger) {
        Status st;
        {
          nb::gil_scoped_release release;
          st = merger.Close();
        }
        ThrowIfError(st);
      });
  m.def(
      "merge_parts",
      [](const std::string& model_path, const std::vector<std::string>& parts,
         const std::string& out_path, const PipelineConfig& config, const std::string& modality) {
        nb::gil_scoped_release release;
        auto ck = ValueOrThrow(Checkpoint::Open(model_path));
        ThrowIfError(MergeParts(*ck, parts, out_path, config, modality));
      },
      nb::arg("model_path"), nb::arg("parts"), nb::arg("out_path"), nb::arg("config"),
      nb::arg("modality"),
      "Writes out_path from a job's part files (in tensor order), as one run would have.");
  m.def(
      "write_dataset_file",
      [](const std::string& model_path, const std::vector<std::string>& parts, size_t first,
         size_t count, const std::string& out_path, const PipelineConfig& config,
         const std::string& modality, int index) {
        nb::gil_scoped_release release;
        auto ck = ValueOrThrow(Checkpoint::Open(model_path));
        ThrowIfError(WriteDatasetFile(*ck, parts, first, count, out_path, config, modality, index));
      },
      nb::arg("model_path"), nb::arg("parts"), nb::arg("first"), nb::arg("count"),
      nb::arg("out_path"), nb::arg("config"), nb::arg("modality"), nb::arg("index"),
      "File `index` of a job's dataset: the parts' tensors [first, first + count).");
  m.def(
      "dataset_file_starts",
      [](const std::vector<uint64_t>& payload_bytes, uint64_t max_file_bytes) {
        return DatasetFileStarts(payload_bytes, max_file_bytes);
      },
      nb::arg("payload_bytes"), nb::arg("max_file_bytes"),
      "Each dataset file's first tensor, for tensors of these payload bytes (stored_bytes).");
  m.def("dataset_pending_name", &DatasetPendingName, nb::arg("index"));
  m.def(
      "finish_dataset",
      [](const std::string& folder, const std::string& path, int count) {
        nb::gil_scoped_release release;
        ThrowIfError(FinishDataset(folder, path, count));
      },
      nb::arg("folder"), nb::arg("path"), nb::arg("count"),
      "Names the dataset's written files and moves `folder` to `path`.");
  m.def(
      "plan",
      [](const std::string& model_path, const PipelineConfig& config) {
        std::vector<std::tuple<std::string, int, double, std::string>> out;
        nb::gil_scoped_release release;
        auto ck = ValueOrThrow(Checkpoint::Open(model_path));
        for (const auto& p : ValueOrThrow(PlanSelection(*ck, config))) {
          out.emplace_back(p.name, p.bits, p.threshold, p.why);
        }
        return out;
      },
      nb::arg("model_path"), nb::arg("config"));
  m.def(
      "detect_modality",
      [](const std::string& model_path) {
        nb::gil_scoped_release release;
        auto ck = ValueOrThrow(Checkpoint::Open(model_path));
        return DetectModality(*ck);
      },
      nb::arg("model_path"));
  m.def(
      "default_rules",
      [](const std::string& modality, const std::string& model_path) {
        Naming naming;
        if (!model_path.empty()) {
          nb::gil_scoped_release release;
          naming = ValueOrThrow(Checkpoint::Open(model_path))->naming();
        }
        std::vector<RuleTuple> out;
        for (const auto& r : DefaultSelectionRules(modality, naming))
          out.emplace_back(r.pattern, r.bits, r.why);
        return out;
      },
      nb::arg("modality"), nb::arg("model_path") = "",
      "The default selection rules for a modality, by the role table of the checkpoint's naming "
      "layout (diffusers' without a path).");
  m.def(
      "tensor_roles",
      [](const std::vector<std::string>& names) {
        const Naming naming = DetectNaming(names);
        const std::vector<TensorRole> roles = RolesOf(naming, names);
        std::vector<std::tuple<std::string, std::string, std::string>> out;
        for (size_t i = 0; i < names.size(); ++i) {
          const NamingComponent* c = ComponentOf(naming, names[i]);
          out.emplace_back(names[i], c ? c->name : "", std::string(TensorRoleName(roles[i])));
        }
        return nb::make_tuple(naming.layout, naming.why, out);
      },
      nb::arg("names"),
      "(layout, why, [(name, component, role)]) of a list of tensor names: the naming layout "
      "they are in, each one's component and role (the table the selection rules use).");
}

}  // namespace arrowquant::py
