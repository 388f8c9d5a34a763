// One layer's job: selection, equalization, quantization, validation against the threshold and
// the fallback ladder (INT2 -> INT4 -> INT8 -> kept), or the width a size budget chose.
#pragma once

#include <optional>
#include <vector>

#include "arrowquant/pipeline.h"
#include "pipeline/selection.h"

namespace arrowquant {

struct LayerOutcome {
  LayerReport report;
  std::optional<QuantizedTensor> q;
  std::vector<std::byte> raw;  // kept tensors (converted to the keep dtype when float)
  DType raw_dtype = DType::kF32;
  Status status;
  bool missed = false;                   // no width met the threshold: kept
  const ActivationPlan* plan = nullptr;  // calibration results for this layer, if any
  std::vector<float> equalized;          // W / s, when the plan equalizes this layer
};

// forced_bits > 0: the width chosen by the size budget (no threshold, no ladder).
void ProcessLayer(const CheckpointTensor& t, const PipelineConfig& c, const CompiledRules& rules,
                  int forced_bits, LayerOutcome& o);

}  // namespace arrowquant
