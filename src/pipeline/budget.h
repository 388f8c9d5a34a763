// The size budget (--target-bpw): widths by measured sensitivity instead of a threshold.
#pragma once

#include <map>
#include <string>

#include "arrowquant/pipeline.h"
#include "pipeline/selection.h"

namespace arrowquant {

// Measures each layer the rules give the target width at 2/4/8 bits, then starts everyone at 8
// and repeatedly lowers the layer whose next step down adds the least squared weight error per
// byte saved, until the model fits c.target_bpw. Returns the width per layer; `note` says
// whether the budget was met.
Result<std::map<std::string, int>> AssignBudget(const Checkpoint& ck, const PipelineConfig& c,
                                                const CompiledRules& rules, std::string* note);

}  // namespace arrowquant
