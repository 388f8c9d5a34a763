// RunPipeline: workers take tensors in file order and quantize/validate them; the calling
// thread writes finished tensors in that same order (so the output does not depend on the
// thread count) and reports progress. At most `threads + 2` tensors are in flight.
#include <algorithm>
#include <atomic>
#include <map>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <regex>
#include <thread>

#include "arrowquant/pipeline.h"
#include "kernels/row_kernels.h"
#include <cstring>

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

const char* KeptName(DType d) { return Traits(d).safetensors_name.data(); }

// Kept float tensors become keep_dtype unless that would overflow (|v| > 65504 for f16).
void Keep(const TensorView& t, DType keep, Outcome& o) {
  const DType src = t.dtype;
  const auto bytes = t.data;
  DType out = src;
  if (Traits(src).quantizable && src != keep) {
    std::vector<float> f(t.num_elements());
    kernels::ToF32(src, bytes.data(), f.size(), f.data());
    bool fits = true;
    if (keep == DType::kF16) {
      for (float v : f) fits &= !(std::isfinite(v) && std::fabs(v) > 65504.0f);
    }
    if (fits) {
      out = keep;
      o.raw.resize(f.size() * ElementBytes(keep));
      if (keep == DType::kF32) std::memcpy(o.raw.data(), f.data(), o.raw.size());
      else kernels::FromF32(keep, f.data(), f.size(), reinterpret_cast<uint16_t*>(o.raw.data()));
    } else {
      o.report.why += " (values beyond f16 range: kept as " + std::string(KeptName(src)) + ")";
    }
  }
  if (out == src) o.raw.assign(bytes.begin(), bytes.end());
  o.raw_dtype = out;
  o.report.action = "kept";
  o.report.format = KeptName(out);
  o.report.stored_bytes = o.raw.size();
}

QuantSpec SpecFor(const PipelineConfig& c, int bits) {
  QuantSpec s = c.spec ? *c.spec : QuantSpec::Recommended(bits);
  if (c.spec && s.bits != bits) {
    const QuantSpec rec = QuantSpec::Recommended(bits);
    s.bits = bits;
    if (s.scales == ScaleStorage::kCoded) s.scale_bits = rec.scale_bits;
  }
  return s;
}

using CompiledRules = std::vector<std::pair<std::regex, SelectionRule>>;

// Calls fn(i) for every i in [0, n), `threads` at a time, in no particular order.
void ParallelForTensors(size_t n, int threads, const std::function<void(size_t)>& fn) {
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < n;) fn(i);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < std::max(1, threads); ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
}

PlannedTensor Decide(const CheckpointTensor& t, const PipelineConfig& c, const CompiledRules& rules) {
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
      return Status(StatusCode::kInvalidArgument, "selection rule '" + r.pattern + "': " + e.what());
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
Status Equalize(const TensorView& w, const std::vector<float>& s, std::vector<float>& out) {
  if (!Traits(w.dtype).quantizable || w.shape.size() < 2 || w.shape[1] != s.size()) {
    return Status(StatusCode::kInvalidArgument,
                  "tensor '" + std::string(w.name) + "': " + std::to_string(s.size()) +
                      " equalization scales do not fit a float weight [out, in, ...] with " +
                      (w.shape.size() < 2 ? std::string("rank < 2") :
                                            std::to_string(w.shape[1]) + " input channels"));
  }
  const size_t n = w.num_elements(), in = s.size();
  const size_t inner = n / std::max<size_t>(1, w.shape[0] * in);
  out.resize(n);
  kernels::ToF32(w.dtype, w.data.data(), n, out.data());
  for (size_t i = 0; i < n; ++i) out[i] /= s[(i / inner) % in];
  return Status::OK();
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
      if (Status st = Equalize(view, o.plan->spatial->equalization_scales, o.equalized); !st.ok()) {
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
    auto q = Quantize(view, SpecFor(c, b), QuantOptions{1});
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
                                : static_cast<double>(n * (Traits(t.info->dtype).quantizable ? ElementBytes(c.keep_dtype)
                                                                                           : ElementBytes(t.info->dtype)));
    }
  }
  ParallelForTensors(tensors.size(), c.threads, [&](size_t i) {
    if (!free[i]) return;
    const auto& t = tensors[i];
    const TensorView view{t.name, t.info->dtype, t.info->shape, t.data()};
    double energy = 0;
    for (int b : {2, 4, 8}) {
      auto q = Quantize(view, SpecFor(c, b), QuantOptions{1});
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

Result<std::vector<PlannedTensor>> PlanSelection(const Checkpoint& ck, const PipelineConfig& config) {
  const std::string modality = config.modality.empty() ? DetectModality(ck).first : config.modality;
  AQ_ASSIGN_OR_RETURN(CompiledRules rules, Compile(config, modality));
  std::vector<PlannedTensor> out;
  for (const auto& t : ck.tensors()) out.push_back(Decide(t, config, rules));
  return out;
}

Result<PipelineReport> RunPipeline(const Checkpoint& ck, const std::string& out_path,
                                   const PipelineConfig& config, const ProgressFn& progress) {
  if (config.bits != 2 && config.bits != 4 && config.bits != 8) {
    return Status(StatusCode::kInvalidArgument, "bits must be 2, 4 or 8, got " + std::to_string(config.bits));
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
  meta.source_json = "{\"path\":\"" + ck.path() + "\",\"layout\":\"" +
                     std::string(CheckpointLayoutName(ck.layout())) + "\"}";
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
  auto worker = [&] {
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
  std::vector<std::thread> pool;
  for (int t = 0; t < std::max(1, config.threads); ++t) pool.emplace_back(worker);
  auto finish = [&](Status st) -> Status {
    {
      std::lock_guard lk(mu);
      stop = true;
    }
    cv.notify_all();
    for (auto& t : pool) t.join();
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
                               (o->report.fallbacks.empty() ? std::string("threshold missed") : o->report.fallbacks.back())));
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
