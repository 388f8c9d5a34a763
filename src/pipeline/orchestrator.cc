// RunPipeline: workers take tensors in file order and quantize/validate them; the calling
// thread writes finished tensors in that same order (so the output does not depend on the
// thread count) and reports progress. At most `threads + 2` tensors are in flight.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <regex>
#include <thread>

#include <nlohmann/json.hpp>

#include "arrowquant/calibration.h"
#include "arrowquant/pipeline.h"
#include "core/parallel.h"
#include "kernels/row_kernels.h"

namespace arrowquant {
namespace {

struct Outcome {
  LayerReport report;
  std::optional<QuantizedTensor> q;
  std::vector<std::byte> raw;  // kept tensors (converted to the keep dtype when float)
  DType raw_dtype = DType::kF32;
  Status status;
  bool missed = false;
  const ActivationPlan* plan = nullptr;  // calibration results for this layer, if any
  std::vector<float> equalized;          // W / s, when the plan equalizes this layer
};

const char* KeptName(DType d) {
  return Traits(d).safetensors_name.data();
}

// A kept float tensor is stored in a narrower float only while that keeps its values: relative
// RMSE of the round trip at most kKeepTolerance (2^-8, bf16's worst-case rounding of a normal
// value, so bf16 holds any tensor within its range), nothing that overflows to inf. Otherwise (tiny
// biases that f16 flushes to zero, values beyond 65504) it goes to BF16, and to its source dtype if
// BF16 does not hold it either; the report says why.
constexpr double kKeepTolerance = 1.0 / 256;

struct RoundTrip {
  uint64_t overflow = 0, flushed = 0;
  double rel_rmse = 0;
};

RoundTrip MeasureRoundTrip(const std::vector<float>& f, DType dtype, std::vector<uint16_t>& buf) {
  RoundTrip r;
  buf.resize(f.size());
  kernels::FromF32(dtype, f.data(), f.size(), buf.data());
  std::vector<float> back(f.size());
  kernels::ToF32(dtype, buf.data(), f.size(), back.data());
  double err = 0, ref = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    if (!std::isfinite(f[i])) continue;
    if (!std::isfinite(back[i])) {
      ++r.overflow;
      continue;
    }
    if (f[i] != 0.0f && back[i] == 0.0f) ++r.flushed;
    const double d = static_cast<double>(f[i]) - back[i];
    err += d * d;
    ref += static_cast<double>(f[i]) * f[i];
  }
  r.rel_rmse = ref > 0 ? std::sqrt(err / ref) : 0.0;
  return r;
}

void Keep(const TensorView& t, DType keep, Outcome& o) {
  const DType src = t.dtype;
  const auto bytes = t.data;
  DType out = src;
  if (Traits(src).quantizable && src != keep) {
    std::vector<float> f(t.num_elements());
    kernels::ToF32(src, bytes.data(), f.size(), f.data());
    if (keep == DType::kF32) {
      out = keep;
      o.raw.resize(f.size() * 4);
      std::memcpy(o.raw.data(), f.data(), o.raw.size());
    } else {
      std::vector<uint16_t> buf;
      std::string lost;
      std::vector<DType> candidates = {keep};
      if (keep != DType::kBF16) candidates.push_back(DType::kBF16);
      for (DType cand : candidates) {
        if (cand == src) break;  // the source dtype holds itself
        const RoundTrip r = MeasureRoundTrip(f, cand, buf);
        if (r.overflow == 0 && r.rel_rmse <= kKeepTolerance) {
          out = cand;
          o.raw.resize(buf.size() * 2);
          std::memcpy(o.raw.data(), buf.data(), o.raw.size());
          break;
        }
        char rel[32];
        std::snprintf(rel, sizeof rel, "%.3g", r.rel_rmse);
        if (!lost.empty()) lost += "; ";
        lost += std::string(KeptName(cand)) + " would lose values (" + std::to_string(r.overflow) +
                " overflow, " + std::to_string(r.flushed) + " flushed to zero, relative error " +
                rel + ")";
      }
      if (!lost.empty()) o.report.why += " (" + lost + ": kept as " + KeptName(out) + ")";
    }
  }
  if (out == src) o.raw.assign(bytes.begin(), bytes.end());
  o.raw_dtype = out;
  o.report.action = "kept";
  o.report.format = KeptName(out);
  o.report.stored_bytes = o.raw.size();
}

using CompiledRules = std::vector<std::pair<std::regex, SelectionRule>>;

PlannedTensor Decide(const CheckpointTensor& t, const PipelineConfig& c,
                     const CompiledRules& rules) {
  PlannedTensor p{t.name, c.bits, c.max_rel_rmse, "", true};
  for (const auto& [re, rule] : rules) {
    if (std::regex_search(t.name, re)) {
      p.target_width = rule.bits < 0;
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
  return p;
}

Result<CompiledRules> Compile(const PipelineConfig& config, const std::string& modality) {
  CompiledRules rules;
  auto all_rules = config.rules;
  for (auto& r : DefaultSelectionRules(modality)) all_rules.push_back(r);
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

// forced_bits > 0: the width chosen by the size budget (no fallback ladder).
void Process(const CheckpointTensor& t, const PipelineConfig& c, const CompiledRules& rules,
             int forced_bits, Outcome& o) {
  LayerReport& r = o.report;
  r.name = t.name;
  r.shape = t.info->shape;
  r.source_dtype = std::string(Traits(t.info->dtype).safetensors_name);
  r.source_bytes = t.info->nbytes();
  const PlannedTensor plan = Decide(t, c, rules);
  const int bits = forced_bits > 0 ? forced_bits : plan.bits;
  const double threshold = forced_bits > 0 ? 1e30 : plan.threshold;
  r.why = forced_bits > 0 ? "width from the size budget" : plan.why;
  TensorView view{t.name, t.info->dtype, t.info->shape, t.data()};
  if (const auto p = c.activations.find(t.name); p != c.activations.end()) {
    o.plan = &p->second;
    if (o.plan->spatial && !o.plan->spatial->equalization_scales.empty()) {
      if (Status st = EqualizedWeight(view, o.plan->spatial->equalization_scales, o.equalized);
          !st.ok()) {
        o.status = st;
        return;
      }
      view = TensorView{t.name, DType::kF32, t.info->shape,
                        std::as_bytes(std::span<const float>(o.equalized))};
    }
  }
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
  const std::vector<int> ladder = forced_bits > 0 ? std::vector<int>{bits}
                                  : bits <= 2     ? std::vector<int>{2, 4, 8}
                                  : bits <= 4     ? std::vector<int>{4, 8}
                                                  : std::vector<int>{8};
  for (int b : ladder) {
    auto q = Quantize(view, c.SpecFor(b), QuantOptions{1});
    if (!q.ok()) {
      o.status = q.status();
      return;
    }
    auto m = MeasureError(*q, view, QuantOptions{1});
    if (!m.ok()) {
      o.status = m.status();
      return;
    }
    if (m->rel_rmse <= threshold) {
      r.action = "quantized";
      r.bits = b;
      r.format = q->spec.ToString();
      r.metrics = *m;
      r.stored_bytes = q->nbytes();
      o.q = std::move(*q);
      return;
    }
    char buf[160];
    std::snprintf(buf, sizeof buf, "int%d: relative RMSE %.4f > %.4f", b, m->rel_rmse, threshold);
    r.fallbacks.push_back(buf);
  }
  o.missed = true;
  r.why = "no width met the threshold";
  Keep(view, c.keep_dtype, o);
}

// Measures each free layer at 2/4/8 bits, then starts everyone at 8 and repeatedly lowers the
// layer whose next step down adds the least squared error per byte saved, until the model fits.
Result<std::map<std::string, int>> AssignBudget(const Checkpoint& ck, const PipelineConfig& c,
                                                const CompiledRules& rules, std::string* note) {
  struct Option {
    int bits;
    double bytes, sse;
  };
  const auto& tensors = ck.tensors();
  std::vector<std::vector<Option>> options(tensors.size());
  std::vector<Status> errors(tensors.size());
  double fixed_bytes = 0, params = 0;
  std::vector<uint8_t> free(tensors.size(), 0);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    params += static_cast<double>(t.info->num_elements());
    const PlannedTensor p = Decide(t, c, rules);
    free[i] = p.target_width;
    if (!free[i]) {
      const uint64_t n = t.info->num_elements();
      fixed_bytes += p.bits > 0 ? n * (p.bits + 0.5) / 8.0
                                : static_cast<double>(n * (Traits(t.info->dtype).quantizable
                                                               ? ElementBytes(c.keep_dtype)
                                                               : ElementBytes(t.info->dtype)));
    }
  }
  ParallelForEach(tensors.size(), c.threads, [&](size_t i) {
    if (!free[i]) return;
    const auto& t = tensors[i];
    const TensorView view{t.name, t.info->dtype, t.info->shape, t.data()};
    double energy = 0;
    for (int b : {2, 4, 8}) {
      auto q = Quantize(view, c.SpecFor(b), QuantOptions{1});
      if (!q.ok()) {
        errors[i] = q.status();
        return;
      }
      auto m = MeasureError(*q, view, QuantOptions{1});
      if (!m.ok()) {
        errors[i] = m.status();
        return;
      }
      energy = m->mse * static_cast<double>(m->count);
      options[i].push_back({b, static_cast<double>(q->nbytes()), energy});
    }
  });
  for (const auto& e : errors) AQ_RETURN_IF_ERROR(e);
  const double budget = c.target_bpw * params / 8.0;
  std::vector<size_t> level(tensors.size(), 2);  // index into options: start at 8 bits
  double total = fixed_bytes;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (free[i]) total += options[i][2].bytes;
  }
  while (total > budget) {
    size_t best = SIZE_MAX;
    double best_ratio = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (!free[i] || level[i] == 0) continue;
      const Option& cur = options[i][level[i]];
      const Option& down = options[i][level[i] - 1];
      const double saved = cur.bytes - down.bytes;
      if (saved <= 0) continue;
      const double ratio = (down.sse - cur.sse) / saved;
      if (best == SIZE_MAX || ratio < best_ratio) {
        best = i;
        best_ratio = ratio;
      }
    }
    if (best == SIZE_MAX) break;
    total -= options[best][level[best]].bytes - options[best][level[best] - 1].bytes;
    --level[best];
  }
  char buf[200];
  std::snprintf(buf, sizeof buf, "target %.3f bits/weight: %s at %.3f", c.target_bpw,
                total <= budget ? "met" : "not reachable with the rules' fixed layers",
                8.0 * total / std::max(1.0, params));
  *note = buf;
  std::map<std::string, int> out;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (free[i]) out[tensors[i].name] = options[i][level[i]].bits;
  }
  return out;
}

}  // namespace

QuantSpec PipelineConfig::SpecFor(int width) const {
  QuantSpec s = spec ? *spec : QuantSpec::Recommended(width);
  if (spec && s.bits != width) {
    s.bits = width;
    if (s.scales == ScaleStorage::kCoded) s.scale_bits = QuantSpec::Recommended(width).scale_bits;
  }
  return s;
}

Result<std::vector<PlannedTensor>> PlanSelection(const Checkpoint& ck,
                                                 const PipelineConfig& config) {
  const std::string modality = config.modality.empty() ? DetectModality(ck).first : config.modality;
  AQ_ASSIGN_OR_RETURN(CompiledRules rules, Compile(config, modality));
  std::vector<PlannedTensor> out;
  for (const auto& t : ck.tensors()) out.push_back(Decide(t, config, rules));
  return out;
}

Result<PipelineReport> RunPipeline(const Checkpoint& ck, const std::string& out_path,
                                   const PipelineConfig& config, const ProgressFn& progress) {
  if (config.bits != 2 && config.bits != 4 && config.bits != 8) {
    return Status(StatusCode::kInvalidArgument,
                  "bits must be 2, 4 or 8, got " + std::to_string(config.bits));
  }
  if (!(config.max_rel_rmse > 0)) {
    return Status(StatusCode::kInvalidArgument, "max_rel_rmse must be positive");
  }
  PipelineReport report;
  if (config.modality.empty()) {
    std::tie(report.modality, report.modality_reason) = DetectModality(ck);
  } else {
    report.modality = config.modality;
    report.modality_reason = "given";
  }
  AQ_ASSIGN_OR_RETURN(CompiledRules rules, Compile(config, report.modality));
  for (const auto& [name, plan] : config.activations) {
    if (!ck.Find(name)) {
      return Status(StatusCode::kNotFound, "calibration results name tensor '" + name +
                                               "', which " + ck.path() + " does not have");
    }
  }

  ModelMetadata meta;
  meta.tool_version = config.tool_version;
  meta.recipe_json = config.recipe_json;
  meta.modality = report.modality;
  meta.source_json = nlohmann::json{{"path", ck.path()},
                                    {"layout", std::string(CheckpointLayoutName(ck.layout()))}}
                         .dump();
  AQ_ASSIGN_OR_RETURN(std::unique_ptr<ModelWriter> writer, ModelWriter::Open(out_path, meta));

  const auto& tensors = ck.tensors();
  const size_t n = tensors.size();
  std::map<std::string, int> forced;
  if (config.target_bpw > 0) {
    AQ_ASSIGN_OR_RETURN(forced, AssignBudget(ck, config, rules, &report.budget_note));
  }
  uint64_t total = 0;
  for (const auto& t : tensors) total += t.info->nbytes();
  const size_t window = static_cast<size_t>(std::max(1, config.threads)) + 2;

  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::unique_ptr<Outcome>> ready(n);  // slot per tensor
  size_t next_task = 0, next_write = 0;
  bool stop = false;
  auto worker = [&](int) {
    for (;;) {
      size_t i;
      {
        std::unique_lock lk(mu);
        cv.wait(lk, [&] { return stop || next_task >= n || next_task < next_write + window; });
        if (stop || next_task >= n) return;
        i = next_task++;
      }
      auto o = std::make_unique<Outcome>();
      const auto f = forced.find(tensors[i].name);
      Process(tensors[i], config, rules, f == forced.end() ? 0 : f->second, *o);
      {
        std::lock_guard lk(mu);
        ready[i] = std::move(o);
      }
      cv.notify_all();
    }
  };
  WorkerGroup pool(std::max(1, config.threads), worker);
  auto finish = [&](Status st) -> Status {
    {
      std::lock_guard lk(mu);
      stop = true;
    }
    cv.notify_all();
    pool.Join();
    if (!st.ok()) writer->Abort();
    return st;
  };

  uint64_t done = 0;
  for (size_t i = 0; i < n; ++i) {
    std::unique_ptr<Outcome> o;
    {
      std::unique_lock lk(mu);
      cv.wait(lk, [&] { return ready[i] != nullptr; });
      o = std::move(ready[i]);
      next_write = i + 1;
    }
    cv.notify_all();
    if (!o->status.ok()) return finish(o->status);
    if (o->missed && config.fail_fast) {
      return finish(Status(StatusCode::kThresholdMissed,
                           "tensor '" + o->report.name + "': " +
                               (o->report.fallbacks.empty() ? std::string("threshold missed")
                                                            : o->report.fallbacks.back())));
    }
    const auto& t = tensors[i];
    TensorRecord rec;
    rec.name = t.name;
    rec.component = t.component;
    if (o->q) {
      rec.quantized = &*o->q;
      rec.metrics = o->report.metrics;
    } else {
      rec.raw = o->raw;
      rec.raw_dtype = o->raw_dtype;
      rec.raw_shape = t.info->shape;
    }
    if (o->plan) {
      rec.time_aware = o->plan->time_aware;
      rec.spatial = o->plan->spatial;
      rec.activation_stats = o->plan->stats;
    }
    if (Status st = writer->Write(rec); !st.ok()) return finish(st);
    t.file->Evict(*t.info);
    report.threshold_missed |= o->missed;
    report.source_bytes += o->report.source_bytes;
    report.stored_bytes += o->report.stored_bytes;
    report.total_params += t.info->num_elements();
    if (o->q) report.quantized_params += t.info->num_elements();
    report.layers.push_back(std::move(o->report));
    done += t.info->nbytes();
    if (progress && !progress(done, total, t.name)) {
      return finish(Status(StatusCode::kCancelled, out_path + ": cancelled"));
    }
  }
  AQ_RETURN_IF_ERROR(finish(Status::OK()));
  AQ_RETURN_IF_ERROR(writer->Close());
  return report;
}

}  // namespace arrowquant
