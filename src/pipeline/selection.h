// The selection rules compiled once per job, and the decision for one tensor (shared by the
// plan, the size budget and the per-layer job).
#pragma once

#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "arrowquant/pipeline.h"

namespace arrowquant {

using CompiledRules = std::vector<std::pair<std::regex, SelectionRule>>;

// The user's rules, then the modality's defaults; an invalid regex is an error naming it.
Result<CompiledRules> CompileRules(const PipelineConfig& config, const std::string& modality,
                                   const Naming& naming);

// The first matching rule, then what no rule overrides: non-float dtypes, 1-D tensors and
// tensors below min_elements are kept.
PlannedTensor Decide(const CheckpointTensor& t, const PipelineConfig& c,
                     const CompiledRules& rules);

}  // namespace arrowquant
