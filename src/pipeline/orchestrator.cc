// RunPipeline: workers take tensors in file order and quantize/validate them (pipeline/layer);
// the calling thread writes finished tensors in that same order (so the output does not depend on
// the thread count) and reports progress. The tensors in flight (started, not yet written) are at
// most kWindowTensors and kWindowBytes of source bytes (beyond the oldest), so a worker goes on
// with small tensors while another one works through a large one.
#include <algorithm>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "arrowquant/pipeline.h"
#include "core/parallel.h"
#include "pipeline/budget.h"
#include "pipeline/job_writer.h"
#include "pipeline/layer.h"
#include "pipeline/selection.h"

namespace arrowquant {
namespace {

constexpr size_t kWindowTensors = 64;
constexpr uint64_t kWindowBytes = uint64_t{256} << 20;

Status CheckSettings(int bits, double max_rel_rmse, const std::string& where) {
  if (!IsWeightWidth(bits)) {
    return Status(StatusCode::kInvalidArgument,
                  where + "bits must be 2, 3, 4 or 8, got " + std::to_string(bits));
  }
  if (!(max_rel_rmse > 0)) {
    return Status(StatusCode::kInvalidArgument, where + "max_rel_rmse must be positive");
  }
  return Status::OK();
}

Status CheckConfig(const PipelineConfig& config, const Checkpoint& ck) {
  AQ_RETURN_IF_ERROR(CheckSettings(config.bits, config.max_rel_rmse, ""));
  for (const auto& entry : config.components) {
    const std::string& name = entry.first;
    const ComponentSettings& s = entry.second;
    AQ_RETURN_IF_ERROR(CheckSettings(s.bits, s.max_rel_rmse, "component '" + name + "': "));
    const auto& single = ck.naming().components;
    const bool found =
        std::any_of(ck.components().begin(), ck.components().end(),
                    [&](const auto& c) { return c.name == name; }) ||
        std::any_of(single.begin(), single.end(), [&](const auto& c) { return c.name == name; });
    if (!found) {
      std::string have;
      for (const auto& c : ck.components()) {
        if (!c.name.empty()) have += (have.empty() ? "" : ", ") + c.name;
      }
      for (const auto& c : single) have += (have.empty() ? "" : ", ") + c.name;
      return Status(
          StatusCode::kInvalidArgument,
          "component '" + name + "': " + ck.path() + " has no such component" +
              (have.empty() ? " (it is not a pipeline folder)" : " (it has " + have + ")"));
    }
  }
  return Status::OK();
}

// Each size budget: the job's over the tensors of components without settings, and one per
// component with its own settings.
Result<std::map<std::string, BudgetChoice>> Budgets(
    const Checkpoint& ck, const PipelineConfig& config,
    const std::map<std::string, PipelineConfig>& per, const CompiledRules& rules,
    std::string* note) {
  std::map<std::string, BudgetChoice> forced;
  if (per.empty()) {
    if (config.target_bpw > 0 || config.allocate) {
      AQ_ASSIGN_OR_RETURN(forced, AssignBudget(ck, config, rules, note));
    }
    return forced;
  }
  auto add = [&](const std::string& label, const PipelineConfig& c,
                 const TensorScope& scope) -> Status {
    if (!(c.target_bpw > 0 || c.allocate)) return Status::OK();
    std::string part;
    AQ_ASSIGN_OR_RETURN(auto got, AssignBudget(ck, c, rules, &part, scope));
    forced.merge(got);
    *note += (note->empty() ? "" : "; ") + label + ": " + part;
    return Status::OK();
  };
  const bool rest = std::any_of(ck.tensors().begin(), ck.tensors().end(),
                                [&](const auto& t) { return !per.contains(t.component); });
  if (rest) {
    AQ_RETURN_IF_ERROR(add("other components", config,
                           [&](const CheckpointTensor& t) { return !per.contains(t.component); }));
  }
  for (const auto& entry : per) {
    const std::string& name = entry.first;
    AQ_RETURN_IF_ERROR(add(name, entry.second,
                           [&name](const CheckpointTensor& t) { return t.component == name; }));
  }
  return forced;
}

// The file's record for a finished layer (borrows from `o`, which outlives the write).
TensorRecord RecordOf(const CheckpointTensor& t, const LayerOutcome& o) {
  TensorRecord rec;
  rec.name = t.name;
  rec.component = t.component;
  if (o.q) {
    rec.quantized = &*o.q;
    rec.metrics = o.report.metrics;
  } else {
    rec.raw = o.raw;
    rec.raw_dtype = o.raw_dtype;
    rec.raw_shape = t.info->shape;
  }
  if (o.plan) {
    rec.time_aware = o.plan->time_aware;
    rec.spatial = o.plan->spatial;
    rec.activation_stats = o.plan->stats;
  }
  return rec;
}

std::pair<std::string, std::string> ModalityOf(const Checkpoint& ck, const PipelineConfig& c) {
  if (c.modality.empty()) return DetectModality(ck);
  return {c.modality, "given"};
}

// Each component's own config (built once: a layer's outcome points into its config's
// activation plans until it is written).
std::map<std::string, PipelineConfig> PerComponent(const PipelineConfig& config) {
  std::map<std::string, PipelineConfig> per;
  for (const auto& [name, _] : config.components) per.emplace(name, config.ForComponent(name));
  return per;
}

}  // namespace

Result<JobBudget> AssignBudgets(const Checkpoint& ck, const PipelineConfig& config) {
  AQ_RETURN_IF_ERROR(CheckConfig(config, ck));
  const auto modality = ModalityOf(ck, config).first;
  AQ_ASSIGN_OR_RETURN(CompiledRules rules, CompileRules(config, modality, ck.naming()));
  JobBudget out;
  AQ_ASSIGN_OR_RETURN(out.widths, Budgets(ck, config, PerComponent(config), rules, &out.note));
  return out;
}

Result<PipelineReport> RunPipeline(const Checkpoint& ck, const std::string& out_path,
                                   const PipelineConfig& config, const ProgressFn& progress) {
  AQ_RETURN_IF_ERROR(CheckConfig(config, ck));
  PipelineReport report;
  std::tie(report.modality, report.modality_reason) = ModalityOf(ck, config);
  AQ_ASSIGN_OR_RETURN(CompiledRules rules, CompileRules(config, report.modality, ck.naming()));
  for (const auto& [name, plan] : config.activations) {
    if (!ck.Find(name)) {
      return Status(StatusCode::kNotFound, "calibration results name tensor '" + name +
                                               "', which " + ck.path() + " does not have");
    }
  }
  // A part of a job run in parts writes a scratch file for MergeParts.
  const bool part = config.part_begin != 0 || config.part_end != SIZE_MAX;
  AQ_ASSIGN_OR_RETURN(std::unique_ptr<ModelDatasetWriter> writer,
                      OpenJobWriter(ck, out_path, config, report.modality, part));
  const std::map<std::string, PipelineConfig> per = PerComponent(config);
  auto config_of = [&](const CheckpointTensor& t) -> const PipelineConfig& {
    const auto it = per.find(t.component);
    return it == per.end() ? config : it->second;
  };
  std::map<std::string, BudgetChoice> forced;
  if (config.budget) {
    forced = config.budget->widths;
    report.budget_note = config.budget->note;
  } else {
    AQ_ASSIGN_OR_RETURN(forced, Budgets(ck, config, per, rules, &report.budget_note));
  }

  // This run's part of the tensors (all of them unless the job runs in parts).
  const size_t begin = std::min(config.part_begin, ck.tensors().size());
  const size_t end = std::clamp(config.part_end, begin, ck.tensors().size());
  const std::span<const CheckpointTensor> tensors(ck.tensors().data() + begin, end - begin);
  uint64_t total = 0, done = 0;
  for (const auto& t : tensors) total += t.info->nbytes();
  std::vector<std::unique_ptr<LayerOutcome>> slots(tensors.size());
  auto work = [&](size_t i) {
    auto o = std::make_unique<LayerOutcome>();
    const auto f = forced.find(tensors[i].name);
    ProcessLayer(tensors[i], config_of(tensors[i]), rules, f == forced.end() ? nullptr : &f->second,
                 *o);
    slots[i] = std::move(o);
  };
  auto write = [&](size_t i) -> Status {
    const std::unique_ptr<LayerOutcome> o = std::move(slots[i]);
    AQ_RETURN_IF_ERROR(o->status);
    if (o->missed && config.fail_fast) {
      return Status(StatusCode::kThresholdMissed,
                    "tensor '" + o->report.name + "': " +
                        (o->report.fallbacks.empty() ? std::string("threshold missed")
                                                     : o->report.fallbacks.back()));
    }
    const auto& t = tensors[i];
    AQ_RETURN_IF_ERROR(writer->Write(RecordOf(t, *o)));
    t.file->Evict(*t.info);
    report.threshold_missed |= o->missed;
    report.source_bytes += o->report.source_bytes;
    report.stored_bytes += o->report.stored_bytes;
    report.total_params += t.info->num_elements();
    if (o->q) report.quantized_params += t.info->num_elements();
    report.layers.push_back(std::move(o->report));
    done += t.info->nbytes();
    if (progress && !progress(done, total, t.name)) {
      return Status(StatusCode::kCancelled, out_path + ": cancelled");
    }
    return Status::OK();
  };
  const int threads = std::max(1, config.threads);
  // Tensors in flight are bounded by their source bytes (what a finished one holds until it is
  // written is at most that), not only by count: see ParallelOrdered.
  auto bytes = [&](size_t i) -> uint64_t { return tensors[i].info->nbytes(); };
  if (Status st = ParallelOrdered(tensors.size(), threads, kWindowTensors, work, write, bytes,
                                  kWindowBytes);
      !st.ok()) {
    writer->Abort();
    return st;
  }
  AQ_RETURN_IF_ERROR(writer->Close());
  return report;
}

}  // namespace arrowquant
