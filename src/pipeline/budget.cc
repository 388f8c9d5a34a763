#include "pipeline/budget.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "core/parallel.h"
#include "pipeline/layer.h"

namespace arrowquant {

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
  // With calibration, a layer's cost is its relative output error squared (GPTQ codes, held-out
  // rows), every layer counted alike; without, its squared weight error (as before).
  const bool calibrated = !c.moments.empty();
  ParallelForEach(tensors.size(), c.threads, [&](size_t i) {
    if (!free[i]) return;
    const auto& t = tensors[i];
    const TensorView view{t.name, t.info->dtype, t.info->shape, t.data()};
    const LayerMoments* lm = MomentsOf(c, t.name);
    auto factor = LayerFactor(c, lm);
    if (!factor.ok()) {
      errors[i] = factor.status();
      return;
    }
    for (int b : kWeightBits) {
      auto q = QuantizeAt(view, c, factor->get(), b);
      if (!q.ok()) {
        errors[i] = q.status();
        return;
      }
      double cost = 0;
      if (lm && lm->check) {
        auto e = RelativeOutputError(*q, view, *lm->check, 1);
        if (!e.ok()) {
          errors[i] = e.status();
          return;
        }
        cost = *e * *e;
      } else {
        auto m = MeasureError(*q, view, QuantOptions{1});
        if (!m.ok()) {
          errors[i] = m.status();
          return;
        }
        cost = calibrated ? m->rel_rmse * m->rel_rmse : m->mse * static_cast<double>(m->count);
      }
      options[i].push_back({b, static_cast<double>(q->nbytes()), cost});
    }
  });
  for (const auto& e : errors) AQ_RETURN_IF_ERROR(e);
  const double budget = c.target_bpw * params / 8.0;
  const size_t widest = std::size(kWeightBits) - 1;
  std::vector<size_t> level(tensors.size(), widest);  // index into options: start at 8 bits
  double total = fixed_bytes;
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (free[i]) total += options[i][widest].bytes;
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

}  // namespace arrowquant
