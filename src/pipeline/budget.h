// The size budget (--target-bpw): widths by measured sensitivity instead of a threshold.
#pragma once

#include <functional>
#include <map>
#include <string>

#include "arrowquant/pipeline.h"
#include "pipeline/layer.h"
#include "pipeline/selection.h"

namespace arrowquant {

// Measures each free layer (the rules give it the target width, or a default rule fixed it and
// calibration measured its sensitivity) at 2/3/4/8 bits and kept, starts everyone kept and
// repeatedly takes the step to a narrower option that adds the least cost per byte saved, until
// the model fits c.target_bpw. The cost (GPTQ codes where calibrated, held-out rows): the
// layer's estimated contribution to the one-step error where its sensitivity was measured
// (LayerMoments::sensitivity), else its relative output error squared, else its squared weight
// error. Returns the width per free layer (0: kept), with the output error measured for it;
// `note` says how and whether it was met. With `in_scope`, only those tensors take part (one
// pipeline component's budget): the file's shared bytes are charged by their share of tensors.
using TensorScope = std::function<bool(const CheckpointTensor&)>;
Result<std::map<std::string, BudgetChoice>> AssignBudget(const Checkpoint& ck,
                                                         const PipelineConfig& c,
                                                         const CompiledRules& rules,
                                                         std::string* note,
                                                         const TensorScope& in_scope = {});

}  // namespace arrowquant
