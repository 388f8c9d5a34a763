// GPTQ over the product's formats. Per H block: dampen, invert, and take the upper Cholesky
// factor U of the inverse (in f64, as f32 for the sweep). Then every row is swept independently
// (the update of row r only reads row r and U), eight rows at a time stored column-interleaved
// so that the update w[k] -= e * U[j][k] runs over the eight rows in one vector. Padding rows
// are zero: every real row goes through the same arithmetic whatever the thread count.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "arrowquant/gptq.h"
#include "core/parallel.h"
#include "kernels/round.h"
#include "kernels/row_kernels.h"
#include "quant/gptq_factor.h"
#include "quant/group_fit.h"
#include "quant/layout.h"

namespace arrowquant {
namespace {

using quant::Format;
using quant::RowParams;
using quant::RowStored;

constexpr size_t kLanes = kernels::kRowLanes;
using quant::BlockFactor;

Result<std::vector<BlockFactor>> Factor(const SecondMoments& h, double damp, bool act_order,
                                        std::vector<uint8_t>& dead) {
  std::vector<BlockFactor> out;
  dead.assign(h.dim(), 0);
  for (uint64_t b = 0; b < h.num_blocks(); ++b) {
    BlockFactor f;
    f.c0 = b * h.block();
    f.m = h.BlockSize(b);
    const uint64_t m = f.m;
    std::vector<double> a(m * m);
    double mean = 0;
    for (uint64_t i = 0; i < m; ++i) {
      const double* row = h.UpperRow(b, i);
      for (uint64_t j = i; j < m; ++j) a[i * m + j] = a[j * m + i] = row[j - i];
      if (a[i * m + i] <= 0) {
        a[i * m + i] = 1;  // an input that never varied: its weights do not matter
        dead[f.c0 + i] = 1;
      }
      mean += a[i * m + i];
    }
    mean /= static_cast<double>(m);
    f.order.resize(m);
    for (uint64_t i = 0; i < m; ++i) f.order[i] = i;
    if (act_order) {
      // Columns with the largest input energy first: their errors spread over the most columns.
      std::stable_sort(f.order.begin(), f.order.end(),
                       [&](uint64_t x, uint64_t y) { return a[x * m + x] > a[y * m + y]; });
      std::vector<double> p(m * m);
      for (uint64_t i = 0; i < m; ++i) {
        for (uint64_t j = 0; j < m; ++j) p[i * m + j] = a[f.order[i] * m + f.order[j]];
      }
      a.swap(p);
    }
    // Ill-conditioned H (few rows, correlated inputs): raise the damping until it factors.
    for (double d = damp; d <= 10.0; d *= 10) {
      std::vector<double> l = a;
      for (uint64_t i = 0; i < m; ++i) l[i * m + i] += d * mean;
      f.u = quant::UpperFactorOfInverse(l, m);
      if (!f.u.empty()) break;
    }
    if (f.u.empty()) {
      return Status(StatusCode::kInvalidArgument,
                    "GPTQ: input second moments of columns " + std::to_string(f.c0) + ".." +
                        std::to_string(f.c0 + m) + " are not positive definite");
    }
    out.push_back(std::move(f));
  }
  return out;
}

// The sweep of one tile of up to kLanes rows. `w` holds the tile column-interleaved
// (w[k * kLanes + lane]); codes and stored parameters come out per lane.
// `static_groups` (activation order): every group's parameters were fitted on the whole row
// before the sweep (columns arrive out of group order); otherwise a group is fitted when its
// first column arrives.
bool SweepTile(const Format& f, const quant::Layout& l, const std::vector<BlockFactor>& factors,
               bool static_groups, std::vector<float>& w, std::vector<std::vector<uint8_t>>& codes,
               std::vector<RowStored>& st) {
  const uint64_t g = l.g;
  bool ok = true;
  float scale[kLanes] = {}, offset[kLanes] = {}, inv[kLanes] = {}, err[kLanes] = {};
  std::vector<float> xg(g);
  std::vector<RowParams> params(kLanes);
  if (static_groups) {
    for (size_t r = 0; r < kLanes; ++r) quant::DecodeRow(f, st[r], l.groups, params[r]);
  }
  for (const BlockFactor& bf : factors) {
    for (uint64_t jj = 0; jj < bf.m; ++jj) {
      const uint64_t j = bf.c0 + bf.order[jj];
      if (static_groups) {
        for (size_t r = 0; r < kLanes; ++r) {
          scale[r] = params[r].scale[j / g];
          offset[r] = params[r].offset[j / g];
          inv[r] = params[r].inv_scale[j / g];
        }
      } else if (j % g == 0) {
        const uint64_t gi = j / g, len = std::min<uint64_t>(g, l.cols - j);
        for (size_t r = 0; r < kLanes; ++r) {
          for (uint64_t k = 0; k < len; ++k) xg[k] = w[(j + k) * kLanes + r];
          ok &= quant::FitGroup(f, xg.data(), len, st[r], gi);
          quant::DecodeGroup(f, st[r], gi, &scale[r], &offset[r]);
          inv[r] = quant::InvScale(scale[r]);
        }
      }
      const float* urow = bf.u.data() + jj * bf.m;
      const float ujj = urow[jj];
      float* wj = w.data() + j * kLanes;
      for (size_t r = 0; r < kLanes; ++r) {
        // The kernels' arithmetic (kernels::QuantizeGroups / DequantizePacked).
        const float q = kernels::ClampRound((wj[r] + offset[r]) * inv[r], f.qmax);
        codes[r][j] = static_cast<uint8_t>(q);
        const float deq = q * scale[r] - offset[r];
        err[r] = (wj[r] - deq) / ujj;
      }
      if (!static_groups) {  // sweep order = column order: the later columns are contiguous
        kernels::LanesAxpy(err, urow + jj + 1, bf.m - jj - 1, wj + kLanes);
        continue;
      }
      for (uint64_t kk = jj + 1; kk < bf.m; ++kk) {
        const float u = urow[kk];
        float* wk = w.data() + (bf.c0 + bf.order[kk]) * kLanes;
        for (size_t r = 0; r < kLanes; ++r) wk[r] -= err[r] * u;
      }
    }
  }
  return ok;
}

}  // namespace

Result<std::shared_ptr<const GptqFactor>> FactorGptq(const SecondMoments& h,
                                                     const GptqOptions& options) {
  auto f = std::make_shared<GptqFactor>();
  f->dim = h.dim();
  f->block = h.block();
  f->act_order = options.act_order;
  AQ_ASSIGN_OR_RETURN(f->blocks, Factor(h, options.damp, options.act_order, f->dead));
  return std::shared_ptr<const GptqFactor>(std::move(f));
}

Result<QuantizedTensor> QuantizeGptq(const TensorView& weight, const QuantSpec& spec,
                                     const SecondMoments& h, const GptqOptions& options) {
  AQ_RETURN_IF_ERROR(spec.Validate());
  AQ_ASSIGN_OR_RETURN(auto factor, FactorGptq(h, options));
  return QuantizeGptq(weight, spec, *factor, options);
}

Result<QuantizedTensor> QuantizeGptq(const TensorView& weight, const QuantSpec& spec,
                                     const GptqFactor& factor, const GptqOptions& options) {
  AQ_RETURN_IF_ERROR(spec.Validate());
  AQ_RETURN_IF_ERROR(quant::CheckWeight(weight));
  const std::string name(weight.name);
  QuantizedTensor q;
  q.spec = spec;
  q.source_dtype = weight.dtype;
  q.shape = weight.shape;
  quant::RowsCols(weight.shape, &q.rows, &q.cols);
  if (factor.dim != q.cols) {
    return Status(StatusCode::kSizeMismatch, "tensor '" + name + "': input second moments over " +
                                                 std::to_string(factor.dim) +
                                                 " columns, weight has " + std::to_string(q.cols));
  }
  const quant::Layout l = quant::MakeLayout(spec, q.rows, q.cols);
  if (spec.group_size != 0 && factor.block < q.cols && factor.block % l.g != 0) {
    return Status(StatusCode::kInvalidArgument,
                  "tensor '" + name + "': H blocks must hold whole groups");
  }
  q.codes.assign(l.rows * l.code_row_bytes, 0);
  q.scales.assign(l.rows * l.scale_row_bytes, 0);
  q.zeros.assign(l.rows * l.zero_row_bytes, 0);
  q.super_scales.assign(l.rows * l.super_row_bytes, 0);
  if (l.rows == 0 || l.cols == 0) return q;

  const std::vector<BlockFactor>& factors = factor.blocks;
  const std::vector<uint8_t>& dead = factor.dead;
  const Format f(spec);
  const size_t esize = ElementBytes(weight.dtype);
  const uint64_t tiles = (l.rows + kLanes - 1) / kLanes;
  std::vector<uint64_t> bad(tiles, 0);
  std::vector<uint8_t> overflow(tiles, 0);
  ParallelForEach(tiles, options.threads, [&](size_t t) {
    std::vector<float> w(l.cols * kLanes, 0.0f), x(l.cols);
    std::vector<std::vector<uint8_t>> codes(kLanes, std::vector<uint8_t>(l.cols));
    std::vector<RowStored> st(kLanes);
    RowParams p;
    const uint64_t r0 = t * kLanes, n = std::min<uint64_t>(kLanes, l.rows - r0);
    for (size_t r = 0; r < kLanes; ++r) {
      std::fill(x.begin(), x.end(), 0.0f);
      if (r < n) {
        kernels::ToF32(weight.dtype, weight.data.data() + (r0 + r) * l.cols * esize, l.cols,
                       x.data());
        bad[t] += kernels::CountNonFinite(x.data(), l.cols);
      }
      // Row super-scales (kCoded) from the whole row as given; the groups are refitted below.
      if (!quant::FitRow(f, x.data(), l.cols, l.g, st[r], p)) overflow[t] = 1;
      for (uint64_t k = 0; k < l.cols; ++k) w[k * kLanes + r] = dead[k] ? 0.0f : x[k];
    }
    if (bad[t]) return;
    if (!SweepTile(f, l, factors, factor.act_order, w, codes, st)) overflow[t] = 1;
    for (size_t r = 0; r < n; ++r) {
      kernels::PackCodes(codes[r].data(), l.cols, spec.bits,
                         q.codes.data() + (r0 + r) * l.code_row_bytes);
      quant::StoreRow(spec, l, st[r], r0 + r, q);
    }
  });
  AQ_RETURN_IF_ERROR(quant::NonFiniteStatus(name, bad));
  if (std::find(overflow.begin(), overflow.end(), 1) != overflow.end()) {
    return Status(StatusCode::kScaleOverflow,
                  "tensor '" + name + "': values too large for f16 scales; use f32 scale storage");
  }
  return q;
}

namespace {

// x^T H x for kLanes vectors at once (v[k * kLanes + lane], f64), over the upper triangle of each
// H block: the diagonal once, the rest twice. Each lane sums in exactly the order a single
// vector would (j ascending within row i), so a row's value does not depend on its tile
// neighbours; the lanes make the loop over j a vector operation instead of one dependent sum.
void QuadLanes(const SecondMoments& h, const double* v, double* out) {
  for (size_t l = 0; l < kLanes; ++l) out[l] = 0;
  for (uint64_t b = 0; b < h.num_blocks(); ++b) {
    const uint64_t c0 = b * h.block(), m = h.BlockSize(b);
    const double* vb = v + c0 * kLanes;
    // Four rows of H at a time: each row's head (the columns before the four rows' common
    // start) first, then the common columns together, so every sum keeps its order.
    for (uint64_t i0 = 0; i0 < m; i0 += 4) {
      const uint64_t rows = std::min<uint64_t>(4, m - i0), common = std::min(i0 + 4, m);
      double t[4][kLanes] = {};
      const double* tail[4] = {};
      for (uint64_t a = 0; a < rows; ++a) {
        const uint64_t i = i0 + a;
        const double* row = h.UpperRow(b, i);  // row[k] = H[i][i + k]
        kernels::LanesDot(row + 1, vb + (i + 1) * kLanes, common - i - 1, t[a]);
        tail[a] = row + (common - i);
      }
      if (common < m) {
        if (rows == 4) {
          kernels::LanesDot4(tail, vb + common * kLanes, m - common, t[0]);
        } else {
          for (uint64_t a = 0; a < rows; ++a) {
            kernels::LanesDot(tail[a], vb + common * kLanes, m - common, t[a]);
          }
        }
      }
      for (uint64_t a = 0; a < rows; ++a) {
        const uint64_t i = i0 + a;
        const double* vi = vb + i * kLanes;
        const double hii = h.UpperRow(b, i)[0];
        for (size_t l = 0; l < kLanes; ++l) out[l] += vi[l] * (hii * vi[l] + 2 * t[a][l]);
      }
    }
  }
}

}  // namespace

Result<RowOutputEnergy> OutputEnergyPerRow(const QuantizedTensor& q, const TensorView& weight,
                                           const SecondMoments& h, int threads, bool signal) {
  AQ_RETURN_IF_ERROR(quant::CheckWeight(weight));
  if (weight.shape != q.shape || h.dim() != q.cols) {
    return Status(StatusCode::kSizeMismatch, "tensor '" + std::string(weight.name) +
                                                 "': shapes of weight, quantized tensor "
                                                 "and second moments differ");
  }
  std::vector<float> deq(q.rows * q.cols);
  AQ_RETURN_IF_ERROR(Dequantize(q, DType::kF32, std::as_writable_bytes(std::span<float>(deq)),
                                QuantOptions{threads}));
  return OutputEnergyPerRow(deq, weight, h, threads, signal);
}

Result<RowOutputEnergy> OutputEnergyPerRow(std::span<const float> deq, const TensorView& weight,
                                           const SecondMoments& h, int threads, bool signal) {
  AQ_RETURN_IF_ERROR(quant::CheckWeight(weight));
  uint64_t rows = 0, cols = 0;
  quant::RowsCols(weight.shape, &rows, &cols);
  if (h.dim() != cols || deq.size() != rows * cols) {
    return Status(StatusCode::kSizeMismatch, "tensor '" + std::string(weight.name) +
                                                 "': shapes of weight, its decoded values "
                                                 "and second moments differ");
  }
  const size_t esize = ElementBytes(weight.dtype);
  RowOutputEnergy out{std::vector<double>(rows, 0.0), std::vector<double>(signal ? rows : 0, 0.0)};
  const uint64_t tiles = (rows + kLanes - 1) / kLanes;
  ParallelForEach(tiles, threads, [&](size_t tile) {
    std::vector<float> x(cols);
    std::vector<double> e(cols * kLanes, 0.0), w(signal ? cols * kLanes : 0, 0.0);
    const uint64_t r0 = tile * kLanes, n = std::min<uint64_t>(kLanes, rows - r0);
    for (uint64_t l = 0; l < n; ++l) {
      const uint64_t r = r0 + l;
      kernels::ToF32(weight.dtype, weight.data.data() + r * cols * esize, cols, x.data());
      for (uint64_t k = 0; k < cols; ++k) {
        e[k * kLanes + l] = static_cast<double>(x[k]) - deq[r * cols + k];
        if (signal) w[k * kLanes + l] = x[k];
      }
    }
    double qe[kLanes], qw[kLanes];
    QuadLanes(h, e.data(), qe);
    if (signal) QuadLanes(h, w.data(), qw);
    for (uint64_t l = 0; l < n; ++l) {
      out.error[r0 + l] = std::max(0.0, qe[l]);
      if (signal) out.signal[r0 + l] = std::max(0.0, qw[l]);
    }
  });
  return out;
}

namespace {

double Relative(const RowOutputEnergy& rows) {
  double n = 0, d = 0;
  for (size_t r = 0; r < rows.error.size(); ++r) {
    n += rows.error[r];
    d += rows.signal[r];
  }
  return d > 0 ? std::sqrt(n / d) : (n > 0 ? INFINITY : 0.0);
}

}  // namespace

Result<double> RelativeOutputError(const QuantizedTensor& q, const TensorView& weight,
                                   const SecondMoments& h, int threads) {
  AQ_ASSIGN_OR_RETURN(RowOutputEnergy rows, OutputEnergyPerRow(q, weight, h, threads));
  return Relative(rows);
}

Result<double> RelativeOutputError(std::span<const float> deq, const TensorView& weight,
                                   const SecondMoments& h, int threads) {
  AQ_ASSIGN_OR_RETURN(RowOutputEnergy rows, OutputEnergyPerRow(deq, weight, h, threads));
  return Relative(rows);
}

}  // namespace arrowquant
