// H = sum x x^T, block-diagonal, upper triangle of each block (j >= i) stored packed; readers
// mirror it. Rows arrive in tiles of kTile: each H element first sums the tile in f32 (rows in
// order, a multiply then an add: kernels::SumOuter4, vectorized across columns without
// reassociation), then adds that to its f64 total.
#include <algorithm>
#include <cstring>
#include <string>

#include "arrowquant/gptq.h"
#include "core/parallel.h"
#include "kernels/row_kernels.h"

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
    total += m * (m + 1) / 2;
  }
  h_.assign(total, 0.0);
}

Result<std::unique_ptr<SecondMoments>> SecondMoments::Make(uint64_t dim, uint64_t block) {
  if (dim == 0) return Status(StatusCode::kInvalidArgument, "second moments: dimension 0");
  if (block != 0 && block % 128 != 0) {
    return Status(StatusCode::kInvalidArgument,
                  "second moments: block must be a multiple of 128, got " + std::to_string(block));
  }
  const uint64_t b = block == 0 ? dim : std::min(block, dim);
  return std::unique_ptr<SecondMoments>(new SecondMoments(dim, b));
}

Status SecondMoments::Add(std::span<const float> rows, uint64_t n, int threads) {
  if (rows.size() != n * dim_) {
    return Status(StatusCode::kSizeMismatch, "second moments: " + std::to_string(rows.size()) +
                                                 " values are not " + std::to_string(n) +
                                                 " rows of " + std::to_string(dim_));
  }
  // Each task owns kRowsPerTask rows of H and walks the tiles in order; four rows at a time
  // share their column loads (the block boundaries, multiples of 128, never split a four).
  const uint64_t tasks = (dim_ + kRowsPerTask - 1) / kRowsPerTask;
  ParallelForEach(tasks, threads, [&](size_t task) {
    std::vector<float> acc;
    const uint64_t i0 = task * kRowsPerTask, i1 = std::min(dim_, i0 + kRowsPerTask);
    for (uint64_t i = i0; i < i1;) {
      const uint64_t b = i / block_, c0 = b * block_, c1 = std::min(dim_, c0 + block_);
      const uint64_t len = c1 - i, four = i + 4 <= i1 ? 4 : 1;
      acc.resize(4 * len);
      for (uint64_t t0 = 0; t0 < n; t0 += kTile) {
        const uint64_t t1 = std::min(n, t0 + kTile);
        const float* tile = rows.data() + t0 * dim_;
        if (four == 4) {
          kernels::SumOuter4(tile + i, tile + i, dim_, t1 - t0, len, acc.data(), len);
        } else {
          std::fill(acc.begin(), acc.begin() + len, 0.0f);
          for (uint64_t r = 0; r < t1 - t0; ++r) {
            kernels::Axpy(tile[r * dim_ + i], tile + r * dim_ + i, len, acc.data());
          }
        }
        for (uint64_t a = 0; a < four; ++a) {
          double* h = h_.data() + (UpperRow(b, i + a - c0) - h_.data());
          const float* s = acc.data() + a * len + a;  // from the diagonal on
          for (uint64_t k = 0; k < len - a; ++k) h[k] += s[k];
        }
      }
      i += four;
    }
  });
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
