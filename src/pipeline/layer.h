// One layer's job: selection, equalization, quantization, validation against the threshold and
// the fallback ladder (INT2 -> INT4 -> INT8 -> kept), or the width a size budget chose.
#pragma once

#include <memory>
#include <optional>
#include <string>
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

// The weight as it is quantized: W / s (f32, in `equalized`) when the layer's activation plan
// equalizes it, else the checkpoint's own bytes. The view borrows `equalized` or the mmap.
Result<TensorView> LayerView(const CheckpointTensor& t, const PipelineConfig& c,
                             std::vector<float>& equalized);
// The layer's calibration moments (fit H present), or null: round-to-nearest.
const LayerMoments* MomentsOf(const PipelineConfig& c, const std::string& name);
// GPTQ's factored H for the layer (null without moments): computed once, shared by every width.
Result<std::shared_ptr<const GptqFactor>> LayerFactor(const PipelineConfig& c,
                                                      const LayerMoments* lm);
// The layer at `bits` and its weight error: GPTQ with `factor`, or round-to-nearest when it is
// null (then measured in the same pass, QuantizeMeasured).
Result<MeasuredTensor> QuantizeAt(const TensorView& view, const PipelineConfig& c,
                                  const GptqFactor* factor, int bits);

// `forced`: the width chosen by the size budget (no threshold, no ladder); null: the plan's
// width, validated, with the fallback ladder.
void ProcessLayer(const CheckpointTensor& t, const PipelineConfig& c, const CompiledRules& rules,
                  const BudgetChoice* forced, LayerOutcome& o);

}  // namespace arrowquant
