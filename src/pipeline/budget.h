// The size budget (--target-bpw): widths by measured sensitivity instead of a threshold.
#pragma once

#include <map>
#include <string>

#include "arrowquant/pipeline.h"
#include "pipeline/selection.h"

namespace arrowquant {

// Measures each layer the rules give the target width at 2/3/4/8 bits, then starts everyone at 8
// and repeatedly lowers the layer whose next step down adds the least cost per byte saved, until
// the model fits c.target_bpw. The cost: with calibration (c.moments), the layer's relative
// output error squared on held-out rows, GPTQ codes; without, its squared weight error. Returns
// the width per layer; `note` says whether the budget was met.
Result<std::map<std::string, int>> AssignBudget(const Checkpoint& ck, const PipelineConfig& c,
                                                const CompiledRules& rules, std::string* note);

}  // namespace arrowquant
