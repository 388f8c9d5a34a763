// Integer linear and 2-D convolution layers over kernels::Int8Gemm (arrowquant/int8_inference.h).
// Work is split into chunks of output rows (tokens, output pixels); each chunk's activations
// are rounded (and, for a convolution, gathered im2col-style) into a buffer that stays in cache
// while every output channel is computed from it. Each output is computed the same way
// whatever the chunking, so results do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "arrowquant/int8_inference.h"
#include "core/parallel.h"
#include "kernels/int8_gemm.h"
#include "quant/inspect.h"
#include "quant/layout.h"

namespace arrowquant {

struct Int8Weight::Impl {
  std::vector<int8_t> w;
  std::vector<float> scale, bias_r, col;
  kernels::Int8Panels panels;
  uint64_t g = 0;  // group length in columns
  size_t kp = 0;   // columns padded to a multiple of 4
};

Int8Weight::~Int8Weight() = default;

size_t Int8Weight::nbytes() const {
  const Impl& i = *impl_;
  return i.w.size() + 4 * (i.scale.size() + i.bias_r.size() + i.col.size());
}

Result<std::unique_ptr<Int8Weight>> Int8Weight::Make(const QuantizedView& q,
                                                     const QuantOptions& options) {
  AQ_RETURN_IF_ERROR(q.Validate());
  const quant::Layout l = quant::MakeLayout(q.spec, q.rows, q.cols);
  if (l.groups > 1 && l.g % kernels::kQuad != 0) {
    return Status(StatusCode::kUnsupported,
                  "integer kernel: group size " + std::to_string(l.g) + " is not a multiple of 4");
  }
  std::unique_ptr<Int8Weight> out(new Int8Weight());
  out->rows_ = q.rows;
  out->cols_ = q.cols;
  out->impl_ = std::make_unique<Impl>();
  Impl& im = *out->impl_;
  kernels::Int8Panels& p = im.panels;
  p.n = q.rows;
  p.k4s = (q.cols + kernels::kQuad - 1) / kernels::kQuad;
  p.groups = std::max<uint64_t>(l.groups, 1);
  p.group_k4 = l.groups > 1 ? l.g / kernels::kQuad : p.k4s;
  im.g = l.g;
  im.kp = p.k4s * kernels::kQuad;
  const size_t panels = p.panels();
  im.w.assign(panels * p.k4s * kernels::kPanel * kernels::kQuad, 0);
  im.scale.assign(panels * p.groups * kernels::kPanel, 0.0f);
  im.bias_r.assign(panels * p.groups * kernels::kPanel, 0.0f);
  im.col.assign(panels * kernels::kPanel, 0.0f);
  // Codes move to int8 around the middle of their range (8-bit: 0 .. 255 -> -128 .. 127): the
  // offset terms B = qbias s - o then stay small, and so does the float cancellation.
  const int qbias = 1 << (q.spec.bits - 1);
  ParallelFor(q.rows, options.threads, [&](size_t begin, size_t end, int) {
    std::vector<float> s(l.groups), o(l.groups);
    std::vector<uint8_t> codes(l.cols);
    for (size_t n = begin; n < end; ++n) {
      quant::DecodeRowOf(q, n, s.data(), o.data(), codes.data());
      const size_t pn = n / kernels::kPanel, lane = n % kernels::kPanel;
      int8_t* wp = im.w.data() + pn * p.k4s * kernels::kPanel * kernels::kQuad;
      double c = 0;
      for (size_t k = 0; k < l.cols; ++k) {
        const size_t k4 = k / kernels::kQuad;
        wp[(k4 * kernels::kPanel + lane) * kernels::kQuad + k % kernels::kQuad] =
            static_cast<int8_t>(int{codes[k]} - qbias);
        // The dequantized value as the decoder computes it (a multiply, then a subtract).
        const float v = static_cast<float>(codes[k]) * s[k / l.g];
        c += static_cast<double>(v - o[k / l.g]);
      }
      for (size_t g = 0; g < l.groups; ++g) {
        const size_t at = (pn * p.groups + g) * kernels::kPanel + lane;
        im.scale[at] = s[g];
        im.bias_r[at] = static_cast<float>(double{s[g]} * qbias - double{o[g]});
      }
      im.col[n] = static_cast<float>(c);
    }
  });
  p.w = im.w.data();
  p.scale = im.scale.data();
  p.bias_r = im.bias_r.data();
  p.col = im.col.data();
  return out;
}

namespace {

// Rows per chunk: a multiple of the kernel's 6-row block, about 256 KiB of activation codes.
size_t ChunkRows(size_t kp, uint64_t m) {
  const size_t rows = std::clamp<size_t>((256u << 10) / std::max<size_t>(kp, 1) / 6 * 6, 6, 192);
  return static_cast<size_t>(std::min<uint64_t>(rows, m));
}

// Threads for a layer of `work` multiply-adds: starting a thread costs about as much as a
// million of them, so small layers (the many small calls of small models) run on one.
int ThreadsFor(uint64_t work, int threads) {
  return work < (uint64_t{1} << 24) ? 1 : threads;
}

Status CheckBias(std::span<const float> bias, uint64_t rows) {
  if (!bias.empty() && bias.size() != rows) {
    return Status(StatusCode::kSizeMismatch, "integer layer: bias has " +
                                                 std::to_string(bias.size()) + " values, need " +
                                                 std::to_string(rows));
  }
  return Status::OK();
}

}  // namespace

Status Int8Linear(std::span<const float> x, uint64_t m, const Int8Weight& w, ActGrid grid,
                  std::span<const float> bias, std::span<float> y, const QuantOptions& options) {
  const uint64_t k = w.cols(), n = w.rows();
  if (x.size() != m * k || y.size() != m * n) {
    return Status(StatusCode::kSizeMismatch,
                  "integer linear: input has " + std::to_string(x.size()) + " values (need " +
                      std::to_string(m * k) + "), output " + std::to_string(y.size()) + " (need " +
                      std::to_string(m * n) + ")");
  }
  AQ_RETURN_IF_ERROR(CheckBias(bias, n));
  if (m == 0 || n == 0) return Status::OK();
  const Int8Weight::Impl& im = w.impl();
  const kernels::Int8Panels& p = im.panels;
  const size_t chunk = ChunkRows(im.kp, m);
  const size_t chunks = (m + chunk - 1) / chunk;
  const float* b = bias.empty() ? nullptr : bias.data();
  ParallelFor(
      chunks, ThreadsFor(m * n * im.kp, options.threads), [&](size_t begin, size_t end, int) {
        std::vector<uint8_t> xq(chunk * im.kp, 0);
        std::vector<float> rsum(chunk * p.groups);
        for (size_t c = begin; c < end; ++c) {
          const size_t m0 = c * chunk, rows = std::min<size_t>(chunk, m - m0);
          for (size_t r = 0; r < rows; ++r) {
            uint8_t* row = xq.data() + r * im.kp;
            kernels::QuantizeActivations(x.data() + (m0 + r) * k, k, grid.scale, grid.zero, row);
            kernels::GroupSums(row, k, im.g, rsum.data() + r * p.groups);
          }
          kernels::Int8Gemm(xq.data(), im.kp, kernels::kQuad, rsum.data(), rows, p, grid.scale,
                            grid.zero, b, y.data() + m0 * n, n);
        }
      });
  return Status::OK();
}

uint64_t Conv2dShape::out_h() const {
  const uint64_t span = dilation_h * (kernel_h - 1) + 1;
  return height + 2 * pad_h >= span ? (height + 2 * pad_h - span) / stride_h + 1 : 0;
}

uint64_t Conv2dShape::out_w() const {
  const uint64_t span = dilation_w * (kernel_w - 1) + 1;
  return width + 2 * pad_w >= span ? (width + 2 * pad_w - span) / stride_w + 1 : 0;
}

Status Int8Conv2d(std::span<const float> x, const Conv2dShape& s, const Int8Weight& w, ActGrid grid,
                  std::span<const float> bias, std::span<float> y, const QuantOptions& options) {
  if (s.stride_h == 0 || s.stride_w == 0 || s.dilation_h == 0 || s.dilation_w == 0 ||
      s.kernel_h == 0 || s.kernel_w == 0) {
    return Status(StatusCode::kInvalidArgument, "integer conv2d: zero stride, dilation or kernel");
  }
  if (s.channels * s.kernel_h * s.kernel_w != w.cols()) {
    return Status(StatusCode::kSizeMismatch,
                  "integer conv2d: weight has " + std::to_string(w.cols()) +
                      " columns, the input's channels x kernel give " +
                      std::to_string(s.channels * s.kernel_h * s.kernel_w));
  }
  const uint64_t oh = s.out_h(), ow = s.out_w(), n = w.rows();
  const uint64_t pixels = oh * ow, m = s.batch * pixels;
  const uint64_t in_plane = s.height * s.width;
  if (x.size() != s.batch * s.channels * in_plane || y.size() != s.batch * n * pixels) {
    return Status(StatusCode::kSizeMismatch,
                  "integer conv2d: input or output size differs "
                  "from the shape");
  }
  AQ_RETURN_IF_ERROR(CheckBias(bias, n));
  if ((s.pad_h || s.pad_w) &&
      (grid.zero != std::nearbyint(grid.zero) || grid.zero < 0.0f || grid.zero > 255.0f)) {
    return Status(StatusCode::kUnsupported,
                  "integer conv2d: the activation grid has no code for "
                  "0 (zero point outside 0 .. 255), needed for padding");
  }
  if (m == 0 || n == 0) return Status::OK();
  const Int8Weight::Impl& im = w.impl();
  const kernels::Int8Panels& p = im.panels;

  const uint8_t pad = static_cast<uint8_t>(std::clamp(grid.zero, 0.0f, 255.0f));  // code of 0.0
  const int threads = ThreadsFor(m * n * im.kp, options.threads);
  // The whole input rounded once (each value is gathered up to kh * kw times). Stride 1: into
  // a copy with the zero padding in its borders, so that patches are plain runs of codes.
  const bool unit_stride = s.stride_h == 1 && s.stride_w == 1;
  const uint64_t hp = unit_stride ? s.height + 2 * s.pad_h : s.height;
  const uint64_t wp = unit_stride ? s.width + 2 * s.pad_w : s.width;
  const uint64_t planes = s.batch * s.channels;
  // + what the gather reads past the last position: the SIMD loads and the kernel's width.
  std::vector<uint8_t> xq(planes * hp * wp + 64 + (s.kernel_w - 1) * s.dilation_w, pad);
  ParallelFor(planes, threads, [&](size_t begin, size_t end, int) {
    for (size_t pl = begin; pl < end; ++pl) {
      for (uint64_t r = 0; r < s.height; ++r) {
        const uint64_t at = (pl * hp + r + (hp - s.height) / 2) * wp + (wp - s.width) / 2;
        kernels::QuantizeActivations(x.data() + (pl * s.height + r) * s.width, s.width, grid.scale,
                                     grid.zero, xq.data() + at);
      }
    }
  });
  kernels::PatchShape patch;
  patch.channels = s.channels;
  patch.hp = hp;
  patch.wp = wp;
  patch.kh = s.kernel_h;
  patch.kw = s.kernel_w;
  patch.dil_h = s.dilation_h;
  patch.dil_w = s.dilation_w;
  patch.k4s = p.k4s;

  // The GEMM's rows are slots of `row_w` per output row. Narrow images (stride 1, fewer than
  // 16 columns) take the padded width, so that a run of slots is one run of the padded codes
  // long enough for the SIMD gather; the slots past the last column are computed and dropped.
  const uint64_t row_w = unit_stride && ow < 16 ? wp : ow;
  const uint64_t slots = oh * row_w, rows_total = s.batch * slots;
  const size_t chunk = ChunkRows(im.kp, rows_total);
  const size_t chunks = (rows_total + chunk - 1) / chunk;
  const float* bptr = bias.empty() ? nullptr : bias.data();
  const size_t kk = s.kernel_h * s.kernel_w;
  ParallelFor(chunks, threads, [&](size_t begin, size_t end, int) {
    std::vector<uint8_t> cols(chunk * im.kp);
    std::vector<float> rsum(chunk * p.groups);
    std::vector<float> out(chunk * n);
    std::vector<uint32_t> acc(chunk);
    for (size_t c = begin; c < end; ++c) {
      const size_t m0 = c * chunk, rows = std::min<size_t>(chunk, rows_total - m0);
      const size_t plane = kernels::kQuad * rows;  // bytes per quad of k (quad-interleaved)
      // Runs of rows within one output image row (padded width: within one image).
      for (size_t r0 = 0; r0 < rows;) {
        const uint64_t mi = m0 + r0, b = mi / slots, slot = mi % slots;
        const uint64_t py = slot / row_w, px0 = slot % row_w;
        uint8_t* run = cols.data() + r0 * kernels::kQuad;
        if (unit_stride) {
          const size_t len = std::min<size_t>(rows - r0, row_w == wp ? slots - slot : ow - px0);
          kernels::GatherQuads(xq.data() + b * s.channels * hp * wp, patch, py * wp + px0, len, run,
                               plane);
          r0 += len;
          continue;
        }
        const size_t len = std::min<size_t>(rows - r0, ow - px0);
        // Other strides: for each (channel, kernel tap) the run's codes are every stride-th of
        // an input row, the ends outside the image filled with the padding code.
        for (size_t k = s.channels * kk; k < im.kp; ++k) {
          uint8_t* dst = run + (k / kernels::kQuad) * plane + k % kernels::kQuad;
          for (size_t t = 0; t < len; ++t) dst[t * kernels::kQuad] = 0;
        }
        const int64_t y0 = static_cast<int64_t>(py * s.stride_h) - static_cast<int64_t>(s.pad_h);
        for (uint64_t ch = 0; ch < s.channels; ++ch) {
          const uint8_t* src = xq.data() + (b * s.channels + ch) * in_plane;
          for (uint64_t i = 0; i < s.kernel_h; ++i) {
            const int64_t iy = y0 + static_cast<int64_t>(i * s.dilation_h);
            const bool row_in = iy >= 0 && iy < static_cast<int64_t>(s.height);
            const uint8_t* line = src + (row_in ? iy : 0) * static_cast<int64_t>(s.width);
            for (uint64_t j = 0; j < s.kernel_w; ++j) {
              const size_t k = ch * kk + i * s.kernel_w + j;
              uint8_t* dst = run + (k / kernels::kQuad) * plane + k % kernels::kQuad;
              // Input column of run element t: x0 + t * stride, inside [0, width) for t in
              // [lo, hi).
              const int64_t x0 = static_cast<int64_t>(px0 * s.stride_w + j * s.dilation_w) -
                                 static_cast<int64_t>(s.pad_w);
              const int64_t st = static_cast<int64_t>(s.stride_w);
              const int64_t n_run = static_cast<int64_t>(len);
              int64_t lo = 0, hi = 0;
              if (row_in) {
                lo = x0 >= 0 ? 0 : (-x0 + st - 1) / st;
                const int64_t w = static_cast<int64_t>(s.width);
                hi = x0 >= w ? 0 : std::min(n_run, (w - 1 - x0) / st + 1);
                lo = std::min(lo, hi);
              }
              int64_t t = 0;
              for (; t < lo; ++t) dst[t * kernels::kQuad] = pad;
              for (; t < hi; ++t) dst[t * kernels::kQuad] = line[x0 + t * st];
              for (; t < n_run; ++t) dst[t * kernels::kQuad] = pad;
            }
          }
        }
        r0 += len;
      }
      // Sums of each row's codes per weight group (padding codes included, as the float
      // convolution multiplies its zero padding too).
      for (size_t g = 0, k4 = 0; g < p.groups; ++g) {
        const size_t k4_end = std::min(p.k4s, k4 + p.group_k4);
        std::fill(acc.begin(), acc.begin() + rows, 0u);
        for (; k4 < k4_end; ++k4) {
          const uint8_t* q = cols.data() + k4 * plane;
          for (size_t r = 0; r < rows; ++r) {
            acc[r] += uint32_t{q[4 * r]} + q[4 * r + 1] + q[4 * r + 2] + q[4 * r + 3];
          }
        }
        for (size_t r = 0; r < rows; ++r) rsum[r * p.groups + g] = static_cast<float>(acc[r]);
      }
      kernels::Int8Gemm(cols.data(), kernels::kQuad, plane, rsum.data(), rows, p, grid.scale,
                        grid.zero, bptr, out.data(), n);
      // (slot, channel) rows to NCHW, a run of an output row's slots at a time.
      for (size_t r = 0; r < rows;) {
        const uint64_t mi = m0 + r, b = mi / slots, slot = mi % slots;
        const uint64_t py = slot / row_w, px = slot % row_w;
        const size_t run = std::min<size_t>(rows - r, row_w - px);
        const size_t keep = px < ow ? std::min<size_t>(run, ow - px) : 0;
        for (uint64_t o = 0; o < n && keep; ++o) {
          float* dst = y.data() + (b * n + o) * pixels + py * ow + px;
          for (size_t t = 0; t < keep; ++t) dst[t] = out[(r + t) * n + o];
        }
        r += run;
      }
    }
  });
  return Status::OK();
}

bool Int8Accelerated() {
  return kernels::Int8GemmAccelerated();
}
const char* Int8KernelName() {
  return kernels::Int8GemmTarget();
}

}  // namespace arrowquant
