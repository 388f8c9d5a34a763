// H = sum x x^T, block-diagonal, upper triangle of each block (j >= i) maintained; readers
// mirror it. Rows arrive in tiles of kTile: each H element first sums the tile in f32 (an
// elementwise multiply-add, vectorized without reassociation), then adds that to its f64 total.
#include <algorithm>
#include <cstring>
#include <string>

#include "arrowquant/gptq.h"
#include "core/parallel.h"

namespace arrowquant {
namespace {

constexpr uint64_t kTile = 64;
constexpr uint64_t kRowsPerTask = 16;

}  // namespace

SecondMoments::SecondMoments(uint64_t dim, uint64_t block) : dim_(dim), block_(block) {
  uint64_t total = 0;
  for (uint64_t c0 = 0; c0 < dim_; c0 += block_) {
    offsets_.push_back(total);
    const uint64_t m = std::min(block_, dim_ - c0);
    total += m * m;
  }
  h_.assign(total, 0.0);
}

Result<std::unique_ptr<SecondMoments>> SecondMoments::Make(uint64_t dim, uint64_t block) {
  if (dim == 0) return Status(StatusCode::kInvalidArgument, "second moments: dimension 0");
  if (block != 0 && block % 256 != 0) {
    return Status(StatusCode::kInvalidArgument,
                  "second moments: block must be a multiple of 256, got " + std::to_string(block));
  }
  const uint64_t b = block == 0 ? dim : std::min(block, dim);
  return std::unique_ptr<SecondMoments>(new SecondMoments(dim, b));
}

std::span<const double> SecondMoments::Block(uint64_t b) const {
  const uint64_t m = std::min(block_, dim_ - b * block_);
  return {h_.data() + offsets_[b], m * m};
}

Status SecondMoments::Add(std::span<const float> rows, uint64_t n, int threads) {
  if (rows.size() != n * dim_) {
    return Status(StatusCode::kSizeMismatch, "second moments: " + std::to_string(rows.size()) +
                                                 " values are not " + std::to_string(n) +
                                                 " rows of " + std::to_string(dim_));
  }
  for (uint64_t t0 = 0; t0 < n; t0 += kTile) {
    const uint64_t t1 = std::min(n, t0 + kTile);
    const float* tile = rows.data() + t0 * dim_;
    const uint64_t tasks = (dim_ + kRowsPerTask - 1) / kRowsPerTask;
    ParallelForEach(tasks, threads, [&](size_t task) {
      thread_local std::vector<float> acc;
      const uint64_t i0 = task * kRowsPerTask, i1 = std::min(dim_, i0 + kRowsPerTask);
      for (uint64_t i = i0; i < i1; ++i) {
        const uint64_t b = i / block_, c0 = b * block_, c1 = std::min(dim_, c0 + block_);
        const uint64_t m = c1 - c0, len = c1 - i;
        acc.assign(len, 0.0f);
        for (uint64_t r = 0; r < t1 - t0; ++r) {
          const float* x = tile + r * dim_;
          const float xi = x[i];
          if (xi == 0.0f) continue;
          const float* xj = x + i;
          for (uint64_t k = 0; k < len; ++k) acc[k] += xi * xj[k];
        }
        double* h = h_.data() + offsets_[b] + (i - c0) * m + (i - c0);
        for (uint64_t k = 0; k < len; ++k) h[k] += acc[k];
      }
    });
  }
  count_ += n;
  return Status::OK();
}

Status SecondMoments::Merge(const SecondMoments& other) {
  if (other.dim_ != dim_ || other.block_ != block_) {
    return Status(StatusCode::kInvalidArgument, "second moments: merging different shapes");
  }
  for (size_t k = 0; k < h_.size(); ++k) h_[k] += other.h_[k];
  count_ += other.count_;
  return Status::OK();
}

Status SecondMoments::Restore(std::span<const double> data, uint64_t count) {
  if (data.size() != h_.size()) {
    return Status(StatusCode::kSizeMismatch, "second moments: restoring " +
                                                 std::to_string(data.size()) + " values, need " +
                                                 std::to_string(h_.size()));
  }
  std::copy(data.begin(), data.end(), h_.begin());
  count_ = count;
  return Status::OK();
}

}  // namespace arrowquant
