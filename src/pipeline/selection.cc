// Which tensors are quantized, and how. The defaults give what users report as sensitive in
// diffusion models more precision, by each tensor's role in its checkpoint's naming layout
// (arrowquant/naming.h): the time embedding gets INT8 whatever the target width, adaLN /
// scale-shift modulation a tighter threshold; norms, embeddings, first and last layers stay
// unquantized. Every other linear and conv weight, convs included, takes the target width.
#include "pipeline/selection.h"

#include <map>

namespace arrowquant {

namespace {

// What each role gets by default (roles without an entry take the job's target width).
struct RoleRule {
  TensorRole role;
  int bits;
  const char* why;
  double threshold_scale;
};
// adaLN holds a third of a DiT's weights: INT8 for all of it would cost the size target, so it
// takes the target width but must meet 3/4 of the threshold, else it climbs. The time embedding
// gets INT8 whatever the target width; norms, embeddings, first and last layers stay unquantized.
constexpr RoleRule kRoleRules[] = {
    {TensorRole::kEmbedding, 0, "embedding", 1.0},
    {TensorRole::kModulation, -1,
     "adaLN / scale-shift modulation (sensitive: 3/4 of the threshold)", 0.75},
    {TensorRole::kNorm, 0, "normalization", 1.0},
    {TensorRole::kTimeEmbedding, 8, "time embedding", 1.0},
    {TensorRole::kFirstLayer, 0, "first or last layer", 1.0},
    {TensorRole::kLastLayer, 0, "first or last layer", 1.0},
    {TensorRole::kOutputHead, 0, "output head", 1.0},
};

}  // namespace

std::vector<SelectionRule> DefaultSelectionRules(const std::string& modality,
                                                 const Naming& naming) {
  std::vector<SelectionRule> rules;
  for (const RolePattern& row : RoleTable(naming)) {
    for (const RoleRule& r : kRoleRules) {
      if (r.role != row.role) continue;
      rules.push_back({row.pattern, r.bits, r.why, r.threshold_scale});
    }
  }
  if (modality == "audio") {
    rules.push_back({R"((^|/)(vocoder|mel)\w*)", 0, "audio front/back end"});
  }
  for (auto& r : rules) r.overridable = true;
  return rules;
}

PlannedTensor Decide(const CheckpointTensor& t, const PipelineConfig& c,
                     const CompiledRules& rules) {
  PlannedTensor p{t.name, c.bits, c.max_rel_rmse, "", true};
  if (c.keep_all) return {t.name, 0, c.max_rel_rmse, "component " + t.component + "=keep", false};
  for (const auto& [re, rule] : rules) {
    if (std::regex_search(t.name, re)) {
      p.target_width = rule.bits < 0;
      p.overridable = rule.overridable && rule.bits >= 0;
      p.bits = rule.bits < 0 ? c.bits : rule.bits;
      p.threshold = c.max_rel_rmse * rule.threshold_scale;
      p.why = rule.why.empty() ? "rule '" + rule.pattern + "'" : rule.why;
      break;
    }
  }
  if (!Traits(t.info->dtype).quantizable) {
    p.bits = 0;
    p.why = "dtype " + std::string(Traits(t.info->dtype).safetensors_name) + " is not quantized";
  } else if (t.info->shape.size() < 2) {
    p.bits = 0;
    p.why = "1-D tensor (bias, norm or scale)";
  } else if (t.info->num_elements() < c.min_elements) {
    p.bits = 0;
    p.why = "fewer than " + std::to_string(c.min_elements) + " elements";
  }
  if (p.bits >= 16) p.bits = 0;
  if (p.bits == 0) p.target_width = false;
  if (!Traits(t.info->dtype).quantizable || t.info->shape.size() < 2 ||
      t.info->num_elements() < c.min_elements) {
    p.overridable = false;
  }
  return p;
}

Result<CompiledRules> CompileRules(const PipelineConfig& config, const std::string& modality,
                                   const Naming& naming) {
  CompiledRules rules;
  auto all_rules = config.rules;
  for (auto& r : DefaultSelectionRules(modality, naming)) all_rules.push_back(r);
  for (const auto& r : all_rules) {
    try {
      rules.emplace_back(std::regex(r.pattern, std::regex::ECMAScript), r);
    } catch (const std::regex_error& e) {
      return Status(StatusCode::kInvalidArgument,
                    "selection rule '" + r.pattern + "': " + e.what());
    }
  }
  return rules;
}

QuantSpec PipelineConfig::SpecFor(int width) const {
  QuantSpec s = spec ? *spec : QuantSpec::Recommended(width);
  if (spec && s.bits != width) {
    s.bits = width;
    if (s.scales == ScaleStorage::kCoded) s.scale_bits = QuantSpec::Recommended(width).scale_bits;
  }
  return s;
}

PipelineConfig PipelineConfig::ForComponent(const std::string& name) const {
  PipelineConfig out = *this;
  out.components.clear();
  const auto it = components.find(name);
  if (it == components.end()) return out;
  const ComponentSettings& s = it->second;
  out.bits = s.bits;
  out.spec = s.spec;
  out.max_rel_rmse = s.max_rel_rmse;
  out.target_bpw = s.target_bpw;
  out.allocate = s.allocate;
  out.keep_all = s.keep;
  return out;
}

Result<std::vector<PlannedTensor>> PlanSelection(const Checkpoint& ck,
                                                 const PipelineConfig& config) {
  const std::string modality = config.modality.empty() ? DetectModality(ck).first : config.modality;
  AQ_ASSIGN_OR_RETURN(CompiledRules rules, CompileRules(config, modality, ck.naming()));
  std::vector<PlannedTensor> out;
  std::map<std::string, PipelineConfig> per;
  for (const auto& [name, _] : config.components) per.emplace(name, config.ForComponent(name));
  for (const auto& t : ck.tensors()) {
    const auto it = per.find(t.component);
    out.push_back(Decide(t, it == per.end() ? config : it->second, rules));
  }
  return out;
}

}  // namespace arrowquant
