// Output-aware weight quantization (GPTQ / OPTQ, Frantar et al. 2022) for every weight format
// the product writes.
//
// A layer y = W x is quantized to minimise the error of its output on the calibration inputs,
// sum over inputs of |(W - Q) x|^2 = tr((W - Q) H (W - Q)^T) with H = sum x x^T, instead of the
// weight error |W - Q|^2. Columns are quantized left to right; each column's rounding error is
// spread over the columns not yet quantized through the inverse of H (its upper Cholesky factor).
// Group parameters are fitted when a group's first column arrives, on the weights as updated so
// far (with the error-minimizing search when the spec asks for it); coded scales are coded under
// row super-scales fitted on the whole row first.
//
// H can be block-diagonal (blocks of `block` columns): the memory of a layer with a large input
// dimension (an SD 3x3 conv has 23,040 columns) stays at cols x block, and the error is spread
// only within a block (docs/gptq.md measures what that costs).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "arrowquant/quantize.h"
#include "arrowquant/status.h"
#include "arrowquant/tensor.h"

namespace arrowquant {

// Second moments of a layer's inputs, H = sum x x^T over input rows x (for a conv, unfolded
// patches in the flattened weight's column order). Blocks of `block` columns on the diagonal
// (block = dim: the full matrix), each stored as its upper triangle, row by row (row i of an
// m-column block holds columns i..m-1, contiguous): half the memory of the square, since H is
// symmetric. Sums are f64, each row of H owned by one thread, so the result is the same for
// any thread count; two accumulators over the same rows merge exactly.
class SecondMoments {
 public:
  // block: 0 = full (dim x dim); else a multiple of 128. GPTQ needs whole groups inside a block
  // (256 holds every supported group size); held-out H, used for output errors only, may take
  // 128 to halve its memory.
  static Result<std::unique_ptr<SecondMoments>> Make(uint64_t dim, uint64_t block = 0);

  // Adds n rows of dim floats (row-major).
  Status Add(std::span<const float> rows, uint64_t n, int threads = 1);
  Status Merge(const SecondMoments& other);

  uint64_t dim() const { return dim_; }
  uint64_t block() const { return block_; }
  uint64_t count() const { return count_; }  // rows added
  uint64_t num_blocks() const { return dim_ == 0 ? 0 : (dim_ + block_ - 1) / block_; }
  // Columns in block b: [b*block, b*block + BlockSize(b)).
  uint64_t BlockSize(uint64_t b) const { return std::min(block_, dim_ - b * block_); }
  // Row i of block b (block-local) from its diagonal on: H[i][i], H[i][i+1], ..., H[i][m-1].
  const double* UpperRow(uint64_t b, uint64_t i) const {
    const uint64_t m = BlockSize(b);
    return h_.data() + offsets_[b] + i * m - i * (i - 1) / 2;  // (i = 0: the wrap cancels)
  }
  // Every block's upper triangle, in order (what a cache stores and Restore reads back).
  std::span<const double> data() const { return h_; }
  Status Restore(std::span<const double> data, uint64_t count);

 private:
  SecondMoments(uint64_t dim, uint64_t block);
  uint64_t dim_, block_, count_ = 0;
  std::vector<double> h_;
  std::vector<uint64_t> offsets_;  // start of each block in h_
};

struct GptqOptions {
  double damp = 0.01;  // added to H's diagonal, relative to its mean
  int threads = 1;     // rows spread over threads; results identical for any count
  // Activation order: columns swept by decreasing input energy (H's diagonal) within each H
  // block, with static groups (every group's parameters fitted on the whole row first).
  bool act_order = false;
};

// H damped, inverted and factored per block (and the sweep order): what every width of one
// layer shares. Compute it once, then QuantizeGptq at each width a fallback ladder or a size
// budget tries.
struct GptqFactor;
Result<std::shared_ptr<const GptqFactor>> FactorGptq(const SecondMoments& h,
                                                     const GptqOptions& options = {});

// GPTQ quantization of a F32/F16/BF16 weight [out, in, ...] with H over its cols (in*k*k).
// The result is an ordinary QuantizedTensor of `spec` (same bytes layout, same decoder).
Result<QuantizedTensor> QuantizeGptq(const TensorView& weight, const QuantSpec& spec,
                                     const GptqFactor& factor, const GptqOptions& options = {});
Result<QuantizedTensor> QuantizeGptq(const TensorView& weight, const QuantSpec& spec,
                                     const SecondMoments& h, const GptqOptions& options = {});

// Per output row r of a layer: error[r] = e_r H e_r^T (e_r = row r of W - dequant(q)) and
// signal[r] = w_r H w_r^T, i.e. the squared output error and output energy of that row summed
// over H's rows. `signal` false: only the error (the signal does not depend on the width, so a
// caller trying several widths of one layer computes it once); `signal` is then empty.
struct RowOutputEnergy {
  std::vector<double> error, signal;
};
Result<RowOutputEnergy> OutputEnergyPerRow(const QuantizedTensor& q, const TensorView& weight,
                                           const SecondMoments& h, int threads = 1,
                                           bool signal = true);

// The same from the weight's decoded values (rows x cols f32, e.g. a GGUF tensor's).
Result<RowOutputEnergy> OutputEnergyPerRow(std::span<const float> deq, const TensorView& weight,
                                           const SecondMoments& h, int threads = 1,
                                           bool signal = true);

// The layer's relative output error under H: sqrt(tr(E H E^T) / tr(W H W^T)), E = W - dequant(q).
Result<double> RelativeOutputError(const QuantizedTensor& q, const TensorView& weight,
                                   const SecondMoments& h, int threads = 1);
Result<double> RelativeOutputError(std::span<const float> deq, const TensorView& weight,
                                   const SecondMoments& h, int threads = 1);

}  // namespace arrowquant
