// Timestep-aware activation parameters: group the calibration timesteps, one activation grid per
// group (calibration.h). The grouping acts on activations, whose ranges move with t; weights are
// the same at every timestep and get no time groups.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "arrowquant/calibration.h"

namespace arrowquant {
namespace {

using Hist = std::vector<uint64_t>;

double QMax(int bits) {
  return std::ldexp(1.0, bits) - 1.0;
}

// The value at which a fraction `p` of one side's mass (positive or negative) is reached.
double SideQuantile(std::span<const uint64_t> h, bool positive, double p) {
  const int z = ActivationHistogram::kZeroBin;
  uint64_t total = 0;
  for (int i = 1; i <= ActivationHistogram::kBinsPerSign; ++i) total += h[positive ? z + i : z - i];
  if (total == 0) return 0.0;
  const double want = p * static_cast<double>(total);
  double seen = 0;
  for (int i = 1; i <= ActivationHistogram::kBinsPerSign; ++i) {
    const int bin = positive ? z + i : z - i;
    seen += static_cast<double>(h[bin]);
    if (seen >= want) {
      // The bin's upper edge in magnitude: do not clip values inside the chosen bin.
      const double mid = std::fabs(ActivationHistogram::BinValue(bin));
      const double edge = mid * (1.0 + 0.5 / (ActivationHistogram::kBinsPerOctave + 0.5));
      return positive ? edge : -edge;
    }
  }
  return positive ? std::numeric_limits<double>::infinity()
                  : -std::numeric_limits<double>::infinity();
}

}  // namespace

ActivationGrid GridForRange(double lo, double hi, int bits) {
  lo = std::min(lo, 0.0);
  hi = std::max(hi, 0.0);
  const double qmax = QMax(bits);
  ActivationGrid g;
  if (!(hi - lo > 0) || !std::isfinite(hi - lo)) return g;  // all zeros: any grid is exact
  const double scale = std::max((hi - lo) / qmax, 1e-30);
  g.scale = static_cast<float>(scale);
  g.zero_point = static_cast<int32_t>(std::clamp(std::nearbyint(-lo / scale), 0.0, qmax));
  return g;
}

double ExpectedSquaredError(std::span<const uint64_t> h, const ActivationGrid& grid, int bits) {
  const double s = grid.scale;
  const double lo = (0.0 - grid.zero_point) * s;
  const double hi = (QMax(bits) - grid.zero_point) * s;
  double err = 0;
  uint64_t n = 0;
  for (int b = 0; b < ActivationHistogram::kNumBins; ++b) {
    if (!h[b]) continue;
    n += h[b];
    if (b == ActivationHistogram::kZeroBin) continue;  // zero is on the grid
    const double v = ActivationHistogram::BinValue(b);
    const double c = static_cast<double>(h[b]);
    if (v < lo) {
      err += c * (lo - v) * (lo - v);
    } else if (v > hi) {
      err += c * (v - hi) * (v - hi);
    } else {
      err += c * s * s / 12.0;
    }
  }
  return n ? err / static_cast<double>(n) : 0.0;
}

std::pair<ActivationGrid, double> FitActivationGrid(std::span<const uint64_t> h, double lo,
                                                    double hi, const TimeGroupingOptions& o) {
  if (o.clip == ClipMethod::kPercentile) {
    const double p = o.percentile / 100.0;
    const double plo = std::max(lo, SideQuantile(h, false, p));
    const double phi = std::min(hi, SideQuantile(h, true, p));
    const ActivationGrid g = GridForRange(plo, phi, o.act_bits);
    return {g, ExpectedSquaredError(h, g, o.act_bits)};
  }
  ActivationGrid best = GridForRange(lo, hi, o.act_bits);
  double best_err = ExpectedSquaredError(h, best, o.act_bits);
  if (o.clip == ClipMethod::kMse) {
    // Shrink both ends together; 2% steps down to 20% of the range.
    for (int k = 1; k <= 40; ++k) {
      const double r = 1.0 - 0.02 * k;
      const ActivationGrid g = GridForRange(lo * r, hi * r, o.act_bits);
      const double e = ExpectedSquaredError(h, g, o.act_bits);
      if (e < best_err) {
        best = g;
        best_err = e;
      }
    }
  }
  return {best, best_err};
}

Result<TimeAwareParams> FitTimeGroups(const ActivationCollector& collector,
                                      const TimeGroupingOptions& o) {
  if (o.act_bits != 4 && o.act_bits != 8) {
    return Status(StatusCode::kInvalidArgument,
                  "activation bits must be 4 or 8, got " + std::to_string(o.act_bits));
  }
  if (o.groups < 1) {
    return Status(StatusCode::kInvalidArgument,
                  "time groups must be >= 1, got " + std::to_string(o.groups));
  }
  if (o.clip == ClipMethod::kPercentile && !(o.percentile > 50 && o.percentile <= 100)) {
    return Status(StatusCode::kInvalidArgument, "clip percentile must be in (50, 100]");
  }
  std::vector<const TimestepActivationStats*> ts;
  for (const auto& [t, s] : collector.by_timestep()) {
    if (s.count) ts.push_back(&s);
  }
  if (ts.empty()) {
    return Status(StatusCode::kInvalidArgument, "no calibration activations for this layer");
  }
  const int T = static_cast<int>(ts.size());
  const int K = std::min(o.groups, T);
  const size_t B = ActivationHistogram::kNumBins;

  // Per-timestep ranges (over channels).
  std::vector<double> tlo(T), thi(T);
  for (int i = 0; i < T; ++i) {
    tlo[i] = *std::min_element(ts[i]->channel_min.begin(), ts[i]->channel_min.end());
    thi[i] = *std::max_element(ts[i]->channel_max.begin(), ts[i]->channel_max.end());
  }
  // Group [i, j] (inclusive): merged histogram and range; cost = expected error x values.
  auto fit = [&](int i, int j) {
    Hist h(B, 0);
    double lo = tlo[i], hi = thi[i];
    uint64_t n = 0;
    for (int k = i; k <= j; ++k) {
      for (size_t b = 0; b < B; ++b) h[b] += ts[k]->histogram[b];
      lo = std::min(lo, tlo[k]);
      hi = std::max(hi, thi[k]);
      n += ts[k]->count;
    }
    auto [g, e] = FitActivationGrid(h, lo, hi, o);
    return std::make_pair(g, e * static_cast<double>(n));
  };

  std::vector<int> starts;  // first timestep index of each group
  if (!o.adaptive || K == 1 || K == T) {
    for (int g = 0; g < K; ++g) starts.push_back(static_cast<int>((int64_t{g} * T) / K));
  } else {
    // cost[i][j] for every interval, then dp[k][j] = best split of timesteps 0..j into k groups.
    std::vector<double> cost(static_cast<size_t>(T) * T, 0.0);
    for (int i = 0; i < T; ++i) {  // grow each interval one timestep at a time: O(T^2 B)
      Hist h(B, 0);
      double lo = tlo[i], hi = thi[i];
      uint64_t n = 0;
      for (int j = i; j < T; ++j) {
        for (size_t b = 0; b < B; ++b) h[b] += ts[j]->histogram[b];
        lo = std::min(lo, tlo[j]);
        hi = std::max(hi, thi[j]);
        n += ts[j]->count;
        cost[static_cast<size_t>(i) * T + j] =
            FitActivationGrid(h, lo, hi, o).second * static_cast<double>(n);
      }
    }
    const double inf = std::numeric_limits<double>::infinity();
    std::vector<std::vector<double>> dp(K + 1, std::vector<double>(T, inf));
    std::vector<std::vector<int>> from(K + 1, std::vector<int>(T, 0));
    for (int j = 0; j < T; ++j) dp[1][j] = cost[j];
    for (int k = 2; k <= K; ++k) {
      for (int j = k - 1; j < T; ++j) {
        for (int i = k - 1; i <= j; ++i) {  // the last group is [i, j]
          const double c = dp[k - 1][i - 1] + cost[static_cast<size_t>(i) * T + j];
          if (c < dp[k][j]) {
            dp[k][j] = c;
            from[k][j] = i;
          }
        }
      }
    }
    starts.assign(K, 0);
    int j = T - 1;
    for (int k = K; k >= 2; --k) {
      starts[k - 1] = from[k][j];
      j = from[k][j] - 1;
    }
  }

  TimeAwareParams p;
  p.num_groups = K;
  p.act_bits = o.act_bits;
  p.group_bounds.push_back(0);
  for (int g = 0; g < K; ++g) {
    const int i = starts[g];
    const int j = g + 1 < K ? starts[g + 1] - 1 : T - 1;
    const ActivationGrid grid = fit(i, j).first;
    p.act_scales.push_back(grid.scale);
    p.act_zero_points.push_back(grid.zero_point);
    if (g + 1 < K) {
      const int32_t a = ts[j]->timestep, b = ts[j + 1]->timestep;
      p.group_bounds.push_back(a + (b - a + 1) / 2);
    }
  }
  p.group_bounds.push_back(std::max(o.num_train_timesteps, ts.back()->timestep + 1));
  return p;
}

}  // namespace arrowquant
