#include "pipeline/layer.h"

#include <algorithm>
#include <cstdio>
#include <string>

#include "arrowquant/calibration.h"
#include "kernels/row_kernels.h"
#include "pipeline/keep.h"

namespace arrowquant {
namespace {

void Keep(const TensorView& view, DType keep, LayerOutcome& o) {
  KeptTensor k = KeepTensor(view, keep);
  if (!k.note.empty()) o.report.why += " (" + k.note + ")";
  o.raw = std::move(k.bytes);
  o.raw_dtype = k.dtype;
  o.report.action = "kept";
  o.report.format = KeptName(k.dtype);
  o.report.stored_bytes = o.raw.size();
}

uint64_t CountNonFinite(const TensorView& w) {
  if (!Traits(w.dtype).quantizable) return 0;
  const size_t n = w.num_elements(), chunk = 1 << 16, es = ElementBytes(w.dtype);
  std::vector<float> buf(std::min(n, chunk));
  uint64_t bad = 0;
  for (size_t i = 0; i < n; i += chunk) {
    const size_t m = std::min(chunk, n - i);
    kernels::ToF32(w.dtype, w.data.data() + i * es, m, buf.data());
    bad += kernels::CountNonFinite(buf.data(), m);
  }
  return bad;
}

// W / s along the input-channel axis (dim 1) into `out` (f32).
Status EqualizedWeight(const TensorView& w, const std::vector<float>& s, std::vector<float>& out) {
  if (!Traits(w.dtype).quantizable) {
    return Status(StatusCode::kInvalidArgument,
                  "tensor '" + std::string(w.name) + "': equalization needs a float weight");
  }
  out.resize(w.num_elements());
  kernels::ToF32(w.dtype, w.data.data(), out.size(), out.data());
  return ScaleInputChannels(out, w.shape, s, Equalize::kDivide, w.name);
}

}  // namespace

Result<TensorView> LayerView(const CheckpointTensor& t, const PipelineConfig& c,
                             std::vector<float>& equalized) {
  const TensorView view{t.name, t.info->dtype, t.info->shape, t.data()};
  const auto p = c.activations.find(t.name);
  if (p == c.activations.end() || !p->second.spatial ||
      p->second.spatial->equalization_scales.empty()) {
    return view;
  }
  AQ_RETURN_IF_ERROR(EqualizedWeight(view, p->second.spatial->equalization_scales, equalized));
  return TensorView{t.name, DType::kF32, t.info->shape,
                    std::as_bytes(std::span<const float>(equalized))};
}

const LayerMoments* MomentsOf(const PipelineConfig& c, const std::string& name) {
  const auto it = c.moments.find(name);
  return it != c.moments.end() && it->second.fit ? &it->second : nullptr;
}

Result<std::shared_ptr<const GptqFactor>> LayerFactor(const PipelineConfig& c,
                                                      const LayerMoments* lm) {
  if (!lm) return std::shared_ptr<const GptqFactor>();
  return FactorGptq(*lm->fit, GptqOptions{c.gptq_damp, 1, c.gptq_act_order});
}

Result<MeasuredTensor> QuantizeAt(const TensorView& view, const PipelineConfig& c,
                                  const GptqFactor* factor, int bits) {
  if (!factor) return QuantizeMeasured(view, c.SpecFor(bits), QuantOptions{1});
  AQ_ASSIGN_OR_RETURN(QuantizedTensor q,
                      QuantizeGptq(view, c.SpecFor(bits), *factor, GptqOptions{c.gptq_damp, 1}));
  AQ_ASSIGN_OR_RETURN(ErrorMetrics m, MeasureError(q, view, QuantOptions{1}));
  return MeasuredTensor{std::move(q), m};
}

void ProcessLayer(const CheckpointTensor& t, const PipelineConfig& c, const CompiledRules& rules,
                  const BudgetChoice* forced, LayerOutcome& o) {
  LayerReport& r = o.report;
  r.name = t.name;
  r.component = t.component;
  r.shape = t.info->shape;
  r.source_dtype = std::string(Traits(t.info->dtype).safetensors_name);
  r.source_bytes = t.info->nbytes();
  const PlannedTensor plan = Decide(t, c, rules);
  const int bits = forced ? forced->bits : plan.bits;
  const double threshold = forced ? 1e30 : plan.threshold;
  r.why = forced ? (forced->bits == 0 ? "kept by the size budget" : "width from the size budget")
                 : plan.why;
  if (const auto p = c.activations.find(t.name); p != c.activations.end()) o.plan = &p->second;
  auto viewed = LayerView(t, c, o.equalized);
  if (!viewed.ok()) {
    o.status = viewed.status();
    return;
  }
  const TensorView view = *viewed;
  if (bits == 0) {
    if (r.why.empty()) r.why = "kept by rule";
    Keep(view, c.keep_dtype, o);
    return;
  }
  if (c.keep_nonfinite) {
    if (const uint64_t bad = CountNonFinite(view); bad) {
      r.why = std::to_string(bad) + " NaN/Inf values (--nan-policy keep-fp16)";
      Keep(view, c.keep_dtype, o);
      return;
    }
  }
  const std::vector<int> ladder = forced      ? std::vector<int>{bits}
                                  : bits <= 2 ? std::vector<int>{2, 3, 4, 8}
                                  : bits <= 3 ? std::vector<int>{3, 4, 8}
                                  : bits <= 4 ? std::vector<int>{4, 8}
                                              : std::vector<int>{8};
  const LayerMoments* lm = MomentsOf(c, t.name);
  r.method = lm ? "gptq" : "rtn";
  r.validation = lm && lm->check ? "output" : "weight";
  auto factor = LayerFactor(c, lm);
  if (!factor.ok()) {
    o.status = factor.status();
    return;
  }
  for (int b : ladder) {
    auto measured = QuantizeAt(view, c, factor->get(), b);
    if (!measured.ok()) {
      o.status = measured.status();
      return;
    }
    QuantizedTensor* q = &measured->q;
    const ErrorMetrics* m = &measured->metrics;
    double err = m->rel_rmse;
    const char* what = "relative RMSE";
    if (lm && lm->check && forced && forced->output_error >= 0) {
      r.output_error = err = forced->output_error;  // measured on this very quantization
      what = "relative output error";
    } else if (lm && lm->check) {
      auto out_err = RelativeOutputError(*q, view, *lm->check, 1);
      if (!out_err.ok()) {
        o.status = out_err.status();
        return;
      }
      r.output_error = err = *out_err;
      what = "relative output error";
    }
    if (err <= threshold) {
      r.action = "quantized";
      r.bits = b;
      r.format = q->spec.ToString();
      r.metrics = *m;
      r.stored_bytes = q->nbytes();
      o.q = std::move(*q);
      return;
    }
    char buf[160];
    std::snprintf(buf, sizeof buf, "int%d: %s %.4f > %.4f", b, what, err, threshold);
    r.fallbacks.push_back(buf);
  }
  o.missed = true;
  r.why = "no width met the threshold";
  Keep(view, c.keep_dtype, o);
}

}  // namespace arrowquant
