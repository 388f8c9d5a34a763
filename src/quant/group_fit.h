// Choosing each group's scale and offset (the "grid") for one row, and the stored form of those
// parameters. DecodeGroup() is the one definition of how stored values become the (scale,
// offset) pair the codes use; quantization, dequantization and the search all go through it.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "arrowquant/dtype.h"
#include "arrowquant/quantize.h"

namespace arrowquant::quant {

struct Format {
  explicit Format(const QuantSpec& s)
      : spec(s),
        qmax(static_cast<float>((1 << s.bits) - 1)),
        bias(static_cast<float>(1 << (s.bits - 1))),
        sym(s.scheme == Scheme::kSymmetric),
        cmax((1 << s.scale_bits) - 1) {}
  QuantSpec spec;
  float qmax;  // largest code
  float bias;  // symmetric codes are stored as signed + bias
  bool sym;
  int cmax;  // largest scale code (kCoded)
  // Symmetric search: only scales at which every value rounds inside the code range (the group's
  // extremes never clipped), plus the scale that puts the larger extreme exactly on the longer
  // side's last code. Weight-MSE-optimal clipping of a group's largest weights measured 6 dB
  // worse output than not clipping them on the digits DDPM at GGUF Q4_0 (bench/gguf_e2e.py),
  // with lower weight error; the GGUF encoder sets this.
  bool keep_extremes = false;
};

// Stored parameters of one row, unpacked.
struct RowStored {
  std::vector<uint16_t> scale_f16;  // kF16
  std::vector<float> scale_f32;     // kF32
  std::vector<uint8_t> zero;        // kF16/kF32 asymmetric: integer zero-point
  std::vector<uint8_t> ls, lm;      // kCoded: scale and offset codes
  uint16_t d = 0, dmin = 0;         // kCoded: row super-scales (f16 bits)
  void Resize(const Format& f, size_t groups);
};

// Decoding parameters of one row's groups, as the kernels take them.
struct RowParams {
  std::vector<float> scale, offset, inv_scale;
  void Resize(size_t groups) {
    scale.resize(groups);
    offset.resize(groups);
    inv_scale.resize(groups);
  }
};

inline float InvScale(float s) {
  return s > 0.0f ? 1.0f / s : 0.0f;
}

// Stored -> decode parameters of group gi.
void DecodeGroup(const Format& f, const RowStored& st, size_t gi, float* scale, float* offset);
void DecodeRow(const Format& f, const RowStored& st, size_t groups, RowParams& p);

// Fits every group of row x (length n, groups of g): fills `st` and `p`.
// Returns false if a scale does not fit the storage format (f16 overflow).
bool FitRow(const Format& f, const float* x, size_t n, size_t g, RowStored& st, RowParams& p);

// FitRow for kCoded formats whose super-scales cover `super` values (GGUF's K-quant super-blocks,
// a multiple of g dividing n) rather than the whole row: every group's continuous fit side by
// side first, then each super-block's d/dmin and codes into st[k], p[k]. Each super-block's
// result is FitRow's on those `super` values alone.
bool FitSuperBlocks(const Format& f, const float* x, size_t n, size_t g, size_t super,
                    std::vector<RowStored>& st, std::vector<RowParams>& p);

// Fits one group of a row into `st` at gi, the row's other groups untouched; for kCoded the row's
// super-scales st.d / st.dmin are already set (GPTQ fits groups as their columns arrive, under
// super-scales fitted on the whole row first). Returns false if a scale does not fit the storage.
bool FitGroup(const Format& f, const float* xg, size_t len, RowStored& st, size_t gi);

// The kCoded steps, shared by FitRow and FitGroup: a group's continuous (scale, offset = -min)
// from its values; the offset code under dmin (min/max grid: widens the scale to still reach
// the top); the scale code under d (search: the neighbouring codes by actual error).
struct ContinuousParams {
  float s = 0, m = 0, hi = 0;
};
void ContinuousGroup(const Format& f, const float* xg, size_t len, float mn, float mx,
                     ContinuousParams* out);
void CodeOffset(const Format& f, float dmin, RowStored& st, size_t gi, ContinuousParams& c);
void CodeScale(const Format& f, const float* xg, size_t len, float s, RowStored& st, size_t gi);

// Sum of squared errors of a group quantized with (scale, offset) to the nearest code, using
// exactly the kernels' arithmetic.
double GroupSse(const float* x, size_t len, float scale, float offset, float qmax);

}  // namespace arrowquant::quant
