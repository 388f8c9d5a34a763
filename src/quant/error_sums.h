// Per-row error sums and the metrics they make: shared by quantization (quant/quantizer.cc) and
// the GGUF encoder, so both report the same numbers for the same reconstruction.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "arrowquant/quantize.h"
#include "kernels/row_kernels.h"

namespace arrowquant::quant {

// One row's error sums (kernels::ErrorSums), added over rows in row order by Combine.
struct RowSums {
  double sse = 0, ww = 0, qq = 0, wq = 0, max_abs = 0;
};

inline ErrorMetrics Combine(const std::vector<RowSums>& sums, uint64_t count) {
  RowSums t;
  for (const auto& s : sums) {
    t.sse += s.sse;
    t.ww += s.ww;
    t.qq += s.qq;
    t.wq += s.wq;
    t.max_abs = std::max(t.max_abs, s.max_abs);
  }
  ErrorMetrics m;
  m.count = count;
  m.mse = m.count ? t.sse / static_cast<double>(m.count) : 0;
  m.rel_rmse = t.ww > 0 ? std::sqrt(t.sse / t.ww) : (t.sse > 0 ? INFINITY : 0);
  m.sqnr_db = t.sse > 0 ? 10 * std::log10(t.ww / t.sse) : INFINITY;
  m.cosine = (t.ww > 0 && t.qq > 0) ? t.wq / std::sqrt(t.ww * t.qq) : (t.ww == t.qq ? 1.0 : 0.0);
  m.max_abs = t.max_abs;
  return m;
}

inline RowSums SumsOf(const float* x, const float* y, size_t n) {
  double e[5];
  kernels::ErrorSums(x, y, n, e);
  return RowSums{e[0], e[1], e[2], e[3], e[4]};
}

}  // namespace arrowquant::quant
