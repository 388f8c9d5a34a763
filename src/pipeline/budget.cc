#include "pipeline/budget.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <utility>

#include "arrowquant/model_file.h"
#include "core/parallel.h"
#include "pipeline/layer.h"

namespace arrowquant {
namespace {

// One width a layer can take (bits 0: kept in the keep dtype).
struct Option {
  int bits = 0;
  double bytes = 0;
  double measured = 0;  // with sensitivity: the estimated one-step error contribution
  double relative = 0;  // relative error squared (output where calibrated, else weight)
  bool output = false;  // `relative` is the output error on the held-out H
  double sse = 0;       // squared weight error
};

struct Candidate {
  std::vector<Option> options;  // kWeightBits in order, then keep
  bool has_sensitivity = false;
  double signal = 0;  // with sensitivity: the contribution of losing the layer's output entirely
};

bool HasSensitivity(const LayerMoments* lm, uint64_t rows) {
  return lm && lm->check && lm->check->count() > 0 && lm->sensitivity.size() == rows;
}

Status Measure(const CheckpointTensor& t, const PipelineConfig& c, Candidate& out) {
  std::vector<float> equalized;
  AQ_ASSIGN_OR_RETURN(const TensorView view, LayerView(t, c, equalized));
  const LayerMoments* lm = MomentsOf(c, t.name);
  const uint64_t rows = t.info->shape[0];
  out.has_sensitivity = HasSensitivity(lm, rows);
  AQ_ASSIGN_OR_RETURN(auto factor, LayerFactor(c, lm));
  std::vector<double> row_signal;  // w_r H w_r^T: the same for every width
  for (int b : kWeightBits) {
    AQ_ASSIGN_OR_RETURN(MeasuredTensor measured, QuantizeAt(view, c, factor.get(), b));
    const QuantizedTensor& q = measured.q;
    const ErrorMetrics& m = measured.metrics;
    AQ_ASSIGN_OR_RETURN(const uint64_t stored, StoredPayloadBytes(q));
    Option o{b, static_cast<double>(stored)};
    o.sse = m.mse * static_cast<double>(m.count);
    o.relative = m.rel_rmse * m.rel_rmse;
    if (lm && lm->check) {
      AQ_ASSIGN_OR_RETURN(RowOutputEnergy e,
                          OutputEnergyPerRow(q, view, *lm->check, 1, row_signal.empty()));
      if (row_signal.empty()) row_signal = std::move(e.signal);
      double err = 0, sig = 0, weighted = 0, weighted_sig = 0;
      for (uint64_t r = 0; r < rows; ++r) {
        err += e.error[r];
        sig += row_signal[r];
        if (out.has_sensitivity) {
          weighted += lm->sensitivity[r] * e.error[r];
          weighted_sig += lm->sensitivity[r] * row_signal[r];
        }
      }
      o.relative = sig > 0 ? err / sig : (err > 0 ? 1.0 : 0.0);
      o.output = true;
      const double n = static_cast<double>(lm->check->count());
      o.measured = weighted / n;
      out.signal = weighted_sig / n;
    }
    out.options.push_back(o);
  }
  out.options.push_back(
      {0, static_cast<double>(
              t.info->num_elements() *
              ElementBytes(Traits(t.info->dtype).quantizable ? c.keep_dtype : t.info->dtype))});
  return Status::OK();
}

// The model file's bytes besides the tensors' own (codes, scales, kept values), so that a size
// budget is the file's bits per weight. Measured on our writer's files (docs/format.md,
// "Overhead"): the footer ~1.5 KB plus the recipe; ~3.3 KB per row group (its 33 column chunks'
// page headers and footer entries); ~16 bytes per row in a shared row group (light columns,
// zstd). A tensor of >= 256 KiB gets a row group of its own, and the small tensors between two
// of those share one (up to 256 rows). Plus the activation parameters calibration adds.
double OtherFileBytes(const Checkpoint& ck, const PipelineConfig& c) {
  constexpr double kFooter = 1500, kPerRowGroup = 3300, kPerRow = 16;
  double groups = 0;
  size_t small_run = 0;
  for (const auto& t : ck.tensors()) {
    // Whether it gets its own row group depends on the width it is given: counted as its own
    // where its widest (16-bit) form would be, so that the estimate errs on the large side.
    const bool own =
        static_cast<double>(t.info->num_elements()) * 2.0 >= static_cast<double>(kOwnRowGroupBytes);
    if (own) {
      groups += 1;
      small_run = 0;
    } else {
      groups += small_run % kSharedRowGroupRows == 0 ? 1 : 0;
      ++small_run;
    }
  }
  double bytes = kFooter + static_cast<double>(c.recipe_json.size()) + kPerRowGroup * groups +
                 kPerRow * static_cast<double>(ck.tensors().size());
  for (const auto& [name, plan] : c.activations) {
    if (plan.time_aware) {
      const auto& t = *plan.time_aware;
      bytes += 4.0 * static_cast<double>(t.group_bounds.size() + t.act_scales.size() +
                                         t.act_zero_points.size());
    }
    if (plan.spatial) bytes += 4.0 * static_cast<double>(plan.spatial->equalization_scales.size());
    if (plan.stats) bytes += 12.0 * static_cast<double>(plan.stats->min.size());
  }
  return bytes;
}

}  // namespace

Result<std::map<std::string, BudgetChoice>> AssignBudget(const Checkpoint& ck,
                                                         const PipelineConfig& c,
                                                         const CompiledRules& rules,
                                                         std::string* note,
                                                         const TensorScope& in_scope) {
  const auto& tensors = ck.tensors();
  std::vector<Candidate> cand(tensors.size());
  std::vector<Status> errors(tensors.size());
  std::vector<uint8_t> scope(tensors.size(), 1);
  size_t in = tensors.size();
  if (in_scope) {
    in = 0;
    for (size_t i = 0; i < tensors.size(); ++i) in += scope[i] = in_scope(tensors[i]) ? 1 : 0;
  }
  double fixed_bytes = OtherFileBytes(ck, c), params = 0;
  if (in_scope) fixed_bytes *= static_cast<double>(in) / static_cast<double>(tensors.size());
  std::vector<uint8_t> free(tensors.size(), 0);
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    if (!scope[i]) continue;
    params += static_cast<double>(t.info->num_elements());
    const PlannedTensor p = Decide(t, c, rules);
    // A default rule's fixed width becomes a choice where the layer's sensitivity was measured.
    free[i] =
        p.target_width || (p.overridable && HasSensitivity(MomentsOf(c, t.name), t.info->shape[0]));
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
    errors[i] = Measure(tensors[i], c, cand[i]);
    // Read again when it is written: meanwhile its pages leave this process's memory.
    tensors[i].file->Evict(*tensors[i].info);
  });
  for (const auto& e : errors) AQ_RETURN_IF_ERROR(e);

  // The cost of each option, in one unit for every layer. With measured sensitivity: the
  // estimated contribution to the whole-model relative one-step error squared; a layer without
  // it (never called, or a conv the capture cannot unfold) counts its relative error squared at
  // the median layer's sensitivity. Calibrated without sensitivity: relative output error
  // squared, every layer alike. Weight only: squared weight error.
  std::vector<double> signals;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (free[i] && cand[i].has_sensitivity) signals.push_back(cand[i].signal);
  }
  const bool measured = !signals.empty();
  double median_signal = 0;
  if (measured) {
    std::nth_element(signals.begin(), signals.begin() + signals.size() / 2, signals.end());
    median_signal = signals[signals.size() / 2];
  }
  const bool calibrated = !c.moments.empty();
  // Sized by a profile: no layer below half the profile's width, where the first-order
  // estimate of a coarse width's cost is least trustworthy.
  const int min_bits = c.allocate ? c.bits / 2 : 0;
  auto cost = [&](const Candidate& k, const Option& o) {
    if (k.has_sensitivity) return o.measured;
    if (measured) return o.relative * median_signal;
    return calibrated ? o.relative : o.sse;
  };

  // What the free layers take at the profile's width, uniformly, and at their narrowest.
  const auto at = std::find(std::begin(kWeightBits), std::end(kWeightBits), c.bits);
  const size_t k = static_cast<size_t>(at - std::begin(kWeightBits));
  double uniform = fixed_bytes, narrowest = fixed_bytes;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!free[i]) continue;
    const auto& o = cand[i].options;
    uniform += o[std::min(k, o.size() - 2)].bytes;
    double least = o.back().bytes;
    for (const Option& x : o) {
      if (x.bits == 0 || x.bits >= min_bits) least = std::min(least, x.bytes);
    }
    narrowest += least;
  }
  double budget = c.target_bpw > 0 ? c.target_bpw * params / 8.0 : uniform;
  // A profile's size that even the narrowest widths miss (a tiny model whose metadata and kept
  // tensors alone outweigh it): the profile's width's size instead, redistributed, rather than
  // every layer at its narrowest for nothing. An explicit --target-bpw is obeyed as closely as
  // it can be.
  const bool unreachable = c.allocate && narrowest > budget;
  if (unreachable) budget = std::max(budget, uniform);
  std::vector<size_t> level(tensors.size());  // index into options: start kept
  double total = fixed_bytes;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!free[i]) continue;
    level[i] = cand[i].options.size() - 1;
    total += cand[i].options[level[i]].bytes;
  }
  // The best move of one free layer to another of its options: `score` rates a move (lower
  // wins; NaN: not allowed). Returns {layer, option}, layer SIZE_MAX when none is allowed.
  auto best_move = [&](const auto& score) {
    size_t best = SIZE_MAX, best_to = 0;
    double best_score = 0;
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (!free[i]) continue;
      const Option& cur = cand[i].options[level[i]];
      for (size_t j = 0; j < cand[i].options.size(); ++j) {
        const double v = score(cand[i], cur, cand[i].options[j]);
        if (!std::isnan(v) && (best == SIZE_MAX || v < best_score)) {
          best = i;
          best_to = j;
          best_score = v;
        }
      }
    }
    return std::pair{best, best_to};
  };
  auto move = [&](size_t i, size_t j) {
    total += cand[i].options[j].bytes - cand[i].options[level[i]].bytes;
    level[i] = j;
  };
  // Greedy on the lower convex hull: the step (to any narrower option of any layer) that adds
  // the least cost per byte saved, until the model fits.
  while (total > budget) {
    const auto [i, j] =
        best_move([&](const Candidate& k, const Option& cur, const Option& down) -> double {
          const double saved = cur.bytes - down.bytes;
          if ((down.bits > 0 && down.bits < min_bits) || saved <= 0) return NAN;
          return (cost(k, down) - cost(k, cur)) / saved;
        });
    if (i == SIZE_MAX) break;
    move(i, j);
  }
  // The last step may have saved more than needed: spend what is left on the widenings that
  // remove the most cost per byte added, while they fit.
  while (total <= budget) {
    const auto [i, j] =
        best_move([&](const Candidate& k, const Option& cur, const Option& up) -> double {
          const double added = up.bytes - cur.bytes, gain = cost(k, cur) - cost(k, up);
          if (added <= 0 || gain <= 0 || total + added > budget) return NAN;
          return -gain / added;
        });
    if (i == SIZE_MAX) break;
    move(i, j);
  }
  size_t n_free = 0, n_measured = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    n_free += free[i];
    n_measured += free[i] && cand[i].has_sensitivity;
  }
  char buf[300];
  std::snprintf(buf, sizeof buf, "target %.3f bits/weight%s: %s at %.3f; %zu layers allocated, %s",
                8.0 * budget / std::max(1.0, params),
                unreachable        ? " (the profile's size is out of reach: its width's size)"
                : c.target_bpw > 0 ? (c.allocate ? " (the profile's size)" : "")
                                   : " (the allocated layers' size at the profile's width)",
                total <= budget ? "met" : "not reachable with the rules' fixed layers",
                8.0 * total / std::max(1.0, params), n_free,
                measured ? (std::to_string(n_measured) +
                            " by measured sensitivity (estimated one-step error contribution)")
                               .c_str()
                : calibrated ? "by relative output error"
                             : "by squared weight error");
  *note = buf;
  std::map<std::string, BudgetChoice> out;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (!free[i]) continue;
    const Option& o = cand[i].options[level[i]];
    out[tensors[i].name] = {o.bits, o.bits > 0 && o.output ? std::sqrt(o.relative) : -1.0};
  }
  return out;
}

}  // namespace arrowquant
