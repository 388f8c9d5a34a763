// Per-group weight quantization with real bit-packed INT2/INT3/INT4/INT8 codes.
//
// A weight of shape (out, in, ...) is viewed as a matrix of `rows` = out and `cols` = the product
// of the other dimensions (conv kernels: in*kh*kw). Each row is split into groups of
// `group_size` consecutive columns (0: the whole row is one group); the last group of a row is
// shorter when cols is not a multiple, never padded with invented data.
//
// Every group decodes as   w = code * scale - offset   (code unsigned, 0 .. 2^bits - 1),
// computed in f32 as a multiply followed by a subtract. How scale and offset are stored:
//   ScaleStorage::kF16 / kF32: one scale per group in that float format; asymmetric groups also
//       store an integer zero-point z in code range (offset = scale * z); symmetric groups use
//       z = 2^(bits-1) implicitly (signed codes stored with that bias).
//   ScaleStorage::kCoded: per group a `scale_bits`-bit scale code ls (and, asymmetric, an offset
//       code lm of the same width); per row an f16 super-scale d (and dmin): scale = d * ls,
//       offset = dmin * lm (symmetric: offset = scale * 2^(bits-1)). The k-quant idea of GGUF,
//       with the row as the super-block.
// Byte layouts are in docs/format.md and fixed by golden tests.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "arrowquant/dtype.h"
#include "arrowquant/status.h"
#include "arrowquant/tensor.h"

namespace arrowquant {

enum class Scheme : uint8_t { kAsymmetric = 0, kSymmetric = 1 };
// kMinMax: the group's range [min(x, 0), max(x, 0)] (symmetric: [-max|x|, max|x|]) rounded to
// the nearest code. kSearch: searches the clipping range, then refits scale and offset by least
// squares, keeping the candidate with the lowest squared error (in the spirit of llama.cpp's
// make_qkx and HQQ); the min/max candidate is always among those tried.
enum class Grid : uint8_t { kMinMax = 0, kSearch = 1 };
enum class ScaleStorage : uint8_t { kF16 = 0, kF32 = 1, kCoded = 2 };

// The weight widths the product writes: INT2, INT3, INT4, INT8.
inline constexpr int kWeightBits[] = {2, 3, 4, 8};
constexpr bool IsWeightWidth(int bits) {
  for (int b : kWeightBits) {
    if (b == bits) return true;
  }
  return false;
}

struct QuantSpec {
  int bits = 4;
  int group_size = 32;  // 32, 64, 128, 256; 0 = per channel (whole row)
  Scheme scheme = Scheme::kAsymmetric;
  Grid grid = Grid::kSearch;
  ScaleStorage scales = ScaleStorage::kCoded;
  int scale_bits = 6;  // kCoded only: 6, 7 or 8

  Status Validate() const;
  std::string ToString() const;  // "int4-asym-g32-q7-search"
  // The spec from its stored fields (model file columns, Python arguments): bits, group size,
  // scheme "asym"/"sym", method "search"/"minmax", scale dtype "f16"/"f32"/"q6"/"q7"/"q8".
  // Unknown strings are an error, never a default.
  static Result<QuantSpec> FromFields(int bits, int group_size, std::string_view scheme,
                                      std::string_view method, std::string_view scale_dtype);
  // The format recommended at a width: the one docs/benchmarks.md measures against GGUF/NF4.
  static QuantSpec Recommended(int bits);
};

// The field names of a spec, as FromFields() reads them back.
std::string_view SchemeName(Scheme s);
std::string_view GridName(Grid g);
std::string ScaleDTypeName(const QuantSpec& s);  // "f16", "f32", "q7"

struct QuantizedView;

struct QuantizedTensor {
  QuantSpec spec;
  DType source_dtype = DType::kF32;
  std::vector<uint64_t> shape;  // original shape
  uint64_t rows = 0;
  uint64_t cols = 0;
  // Codes, packed row by row; each row starts on a byte boundary.
  std::vector<uint8_t> codes;
  // kF16: u16 bits per group; kF32: f32 per group; kCoded: scale codes, packed row by row.
  std::vector<uint8_t> scales;
  // Asymmetric only. kF16/kF32: zero-points packed at `bits` like the codes; kCoded: offset codes.
  std::vector<uint8_t> zeros;
  // kCoded only: per row f16 d, then (asymmetric) f16 dmin.
  std::vector<uint8_t> super_scales;

  // Checks that the buffers have the sizes that shape and format imply (e.g. after reading).
  Status Validate() const;
  uint64_t groups_per_row() const;
  // Bytes of one row across all four buffers (rows can be split between files' rows).
  uint64_t bytes_per_row() const;
  uint64_t group_len() const;  // the group size actually used (cols for per-channel)
  uint64_t num_elements() const { return rows * cols; }
  uint64_t nbytes() const {
    return codes.size() + scales.size() + zeros.size() + super_scales.size();
  }
  // The four buffers borrowed (valid while this tensor lives and is not resized).
  QuantizedView View() const;
  // Every stored bit (codes, scales, zero-points, super-scales, row padding) per weight.
  double bits_per_weight() const {
    return num_elements()
               ? 8.0 * static_cast<double>(nbytes()) / static_cast<double>(num_elements())
               : 0.0;
  }
};

// A quantized tensor's four buffers, borrowed from memory someone else owns (a PyTorch module's
// buffers at inference): the layout of QuantizedTensor, nothing copied.
struct QuantizedView {
  QuantSpec spec;
  uint64_t rows = 0;
  uint64_t cols = 0;
  std::span<const uint8_t> codes, scales, zeros, super_scales;

  // The spec is valid and every span has the size rows, cols and spec imply.
  Status Validate() const;
};

struct QuantOptions {
  int threads = 1;  // results are identical for any thread count
};

// Quantizes a F32/F16/BF16 tensor of rank >= 2 (rank 1 is accepted as a single row). NaN or
// Inf in the input is an error naming the tensor and the count.
Result<QuantizedTensor> Quantize(const TensorView& weight, const QuantSpec& spec,
                                 const QuantOptions& options = {});

// Writes num_elements() values of `dtype` (F32, F16 or BF16) into `out`.
Status Dequantize(const QuantizedTensor& q, DType dtype, std::span<std::byte> out,
                  const QuantOptions& options = {});

// Rows [begin, end) of q dequantized into `out`, (end - begin) * cols values of `dtype` (F32,
// F16 or BF16), row-major: a tile of a weight for inference, so that the whole float matrix is
// never held. The values are those Dequantize() writes for the same rows.
Status DequantizeRows(const QuantizedView& q, uint64_t begin, uint64_t end, DType dtype,
                      std::span<std::byte> out, const QuantOptions& options = {});

// Error of q against the weight it came from, computed row by row without materialising the
// dequantized tensor. Sums are accumulated per row in double and added in row order, so the
// result does not depend on the thread count.
struct ErrorMetrics {
  double mse = 0;
  double rel_rmse = 0;  // sqrt(sum (w - w')^2 / sum w^2)
  double sqnr_db = 0;   // 10 log10(sum w^2 / sum (w - w')^2)
  double cosine = 0;
  double max_abs = 0;
  uint64_t count = 0;
};
Result<ErrorMetrics> MeasureError(const QuantizedTensor& q, const TensorView& weight,
                                  const QuantOptions& options = {});

// Quantize() and MeasureError() of its result in one pass over the weight (each row converted
// to f32 once and measured while it is in cache); the same tensor and the same metrics.
struct MeasuredTensor {
  QuantizedTensor q;
  ErrorMetrics metrics;
};
Result<MeasuredTensor> QuantizeMeasured(const TensorView& weight, const QuantSpec& spec,
                                        const QuantOptions& options = {});

}  // namespace arrowquant
