// GGUF block encoding with ArrowQuant's fitting, decoding with ggml's arithmetic.
//
// Every block type is one of our own formats with a fixed row length: a K-quant super-block of
// 256 values is a "row" whose f16 super-scales (d, dmin) code the sub-block scales, exactly the
// kCoded storage of quant/group_fit (Q4_K = int4 asym g32 with 6-bit codes, Q6_K = int6 sym g16
// with 7-bit codes, ...); Q4_0/Q5_0/Q8_0 are symmetric groups of 32 with f16 scales. So the codes
// come from quant::FitRow (the error-minimizing grid and the coded-scale neighbour search) and
// the kernels, and only the byte layout (blocks.h) is GGUF's.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <string>

#include "arrowquant/gguf.h"
#include "core/parallel.h"
#include "formats/gguf/blocks.h"
#include "kernels/pack.h"
#include "kernels/row_kernels.h"
#include "quant/error_sums.h"
#include "quant/gptq_blocks.h"
#include "quant/group_fit.h"
#include "quant/layout.h"

namespace arrowquant {
namespace {

constexpr GgufTypeInfo kTypes[] = {
    {0, "F32", 1, 4},         {1, "F16", 1, 2},         {2, "Q4_0", 32, 18},
    {3, "Q4_1", 32, 20},      {6, "Q5_0", 32, 22},      {7, "Q5_1", 32, 24},
    {8, "Q8_0", 32, 34},      {9, "Q8_1", 32, 40},      {10, "Q2_K", 256, 84},
    {11, "Q3_K", 256, 110},   {12, "Q4_K", 256, 144},   {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210},   {15, "Q8_K", 256, 292},   {16, "IQ2_XXS", 256, 66},
    {17, "IQ2_XS", 256, 74},  {18, "IQ3_XXS", 256, 98}, {19, "IQ1_S", 256, 50},
    {20, "IQ4_NL", 32, 18},   {21, "IQ3_S", 256, 110},  {22, "IQ2_S", 256, 82},
    {23, "IQ4_XS", 256, 136}, {24, "I8", 1, 1},         {25, "I16", 1, 2},
    {26, "I32", 1, 4},        {27, "I64", 1, 8},        {28, "F64", 1, 8},
    {29, "IQ1_M", 256, 56},   {30, "BF16", 1, 2},       {34, "TQ1_0", 256, 54},
    {35, "TQ2_0", 256, 66},   {39, "MXFP4", 32, 17},    {40, "NVFP4", 64, 36},
    {41, "Q1_0", 128, 18},
};

// Each encoded block type as one of our formats: the fit runs on rows of `row` values (0: the
// tensor's own rows, for types whose scales are per group).
struct Codec {
  GgufType type;
  int bits;
  bool sym;
  ScaleStorage scales;
  int scale_bits;
  int g;
  int row;
};

constexpr Codec kCodecs[] = {
    {GgufType::kQ8_0, 8, true, ScaleStorage::kF16, 6, 32, 0},
    {GgufType::kQ6_K, 6, true, ScaleStorage::kCoded, 7, 16, gguf::kQK},
    {GgufType::kQ5_K, 5, false, ScaleStorage::kCoded, 6, 32, gguf::kQK},
    {GgufType::kQ5_0, 5, true, ScaleStorage::kF16, 6, 32, 0},
    {GgufType::kQ4_K, 4, false, ScaleStorage::kCoded, 6, 32, gguf::kQK},
    {GgufType::kQ4_0, 4, true, ScaleStorage::kF16, 6, 32, 0},
    // Q3_K's 6-bit scales are signed (stored + 32): the positive half, 5 bits.
    {GgufType::kQ3_K, 3, true, ScaleStorage::kCoded, 5, 16, gguf::kQK},
    {GgufType::kQ2_K, 2, false, ScaleStorage::kCoded, 4, 16, gguf::kQK},
};

const Codec* FindCodec(GgufType t) {
  for (const Codec& c : kCodecs) {
    if (c.type == t) return &c;
  }
  return nullptr;
}

bool IsFloat(GgufType t) {
  return t == GgufType::kF32 || t == GgufType::kF16 || t == GgufType::kBF16;
}

template <class Block>
void Put(const Block& b, uint8_t* out) {
  std::memcpy(out, &b, sizeof(Block));
}
template <class Block>
Block Get(const uint8_t* in) {
  Block b;
  std::memcpy(&b, in, sizeof(Block));
  return b;
}

// Q4_K/Q5_K's twelve bytes of 6-bit scales and mins.
void PackScaleMin6(const uint8_t* ls, const uint8_t* lm, uint8_t* s) {
  for (int j = 0; j < 4; ++j) {
    s[j] = static_cast<uint8_t>((ls[j] & 63) | ((ls[j + 4] >> 4) << 6));
    s[j + 4] = static_cast<uint8_t>((lm[j] & 63) | ((lm[j + 4] >> 4) << 6));
    s[j + 8] = static_cast<uint8_t>((ls[j + 4] & 15) | ((lm[j + 4] & 15) << 4));
  }
}
void UnpackScaleMin6(const uint8_t* s, int j, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((s[j + 4] & 15) | ((s[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
  }
}

// f16 bits of -v for sign -1.
uint16_t Signed(uint16_t bits, int8_t sign) {
  return sign < 0 ? static_cast<uint16_t>(bits ^ 0x8000u) : bits;
}

// One block at `out`: its codes c, the fitted row's stored parameters st from group gi on, and
// each group's sign (the symmetric types fit sign * x, so that a group's larger extreme lands
// on the code range's longer, negative side, and store the sign in the group's scale).
void PackBlock(const Codec& k, const uint8_t* c, const quant::RowStored& st, size_t gi,
               const int8_t* sign, uint8_t* out) {
  sign += gi;
  switch (k.type) {
    case GgufType::kQ4_0: {
      gguf::BlockQ4_0 b{};
      b.d = Signed(st.scale_f16[gi], sign[0]);
      for (int j = 0; j < 16; ++j) b.qs[j] = static_cast<uint8_t>(c[j] | (c[j + 16] << 4));
      Put(b, out);
      return;
    }
    case GgufType::kQ5_0: {
      gguf::BlockQ5_0 b{};
      b.d = Signed(st.scale_f16[gi], sign[0]);
      uint32_t qh = 0;
      for (int e = 0; e < 32; ++e) qh |= static_cast<uint32_t>(c[e] >> 4) << e;
      std::memcpy(b.qh, &qh, 4);  // little-endian (x86, as ggml)
      for (int j = 0; j < 16; ++j) {
        b.qs[j] = static_cast<uint8_t>((c[j] & 15) | ((c[j + 16] & 15) << 4));
      }
      Put(b, out);
      return;
    }
    case GgufType::kQ8_0: {
      gguf::BlockQ8_0 b{};
      b.d = Signed(st.scale_f16[gi], sign[0]);
      for (int e = 0; e < 32; ++e) b.qs[e] = static_cast<int8_t>(c[e] - 128);
      Put(b, out);
      return;
    }
    case GgufType::kQ2_K: {
      gguf::BlockQ2_K b{};
      b.d = st.d;
      b.dmin = st.dmin;
      for (int j = 0; j < 16; ++j) b.scales[j] = static_cast<uint8_t>(st.ls[j] | (st.lm[j] << 4));
      for (int e = 0; e < gguf::kQK; ++e) {
        const int h = e / 128, s = (e / 32) % 4, l = e % 32;
        b.qs[32 * h + l] |= static_cast<uint8_t>(c[e] << (2 * s));
      }
      Put(b, out);
      return;
    }
    case GgufType::kQ3_K: {
      gguf::BlockQ3_K b{};
      b.d = st.d;
      for (int j = 0; j < 16; ++j) {
        const int sc = sign[j] * st.ls[j] + 32;
        b.scales[j % 8] |= static_cast<uint8_t>((sc & 15) << (4 * (j / 8)));
        b.scales[8 + j % 4] |= static_cast<uint8_t>((sc >> 4) << (2 * (j / 4)));
      }
      for (int e = 0; e < gguf::kQK; ++e) {
        const int h = e / 128, s = (e / 32) % 4, l = e % 32;
        b.qs[32 * h + l] |= static_cast<uint8_t>((c[e] & 3) << (2 * s));
        b.hmask[l] |= static_cast<uint8_t>((c[e] >> 2) << (e / 32));
      }
      Put(b, out);
      return;
    }
    case GgufType::kQ4_K:
    case GgufType::kQ5_K: {
      uint8_t scales[12];
      PackScaleMin6(st.ls.data(), st.lm.data(), scales);
      uint8_t qs[128] = {};
      for (int e = 0; e < gguf::kQK; ++e) {
        const int i = e / 64, h = (e / 32) % 2, l = e % 32;
        qs[32 * i + l] |= static_cast<uint8_t>((c[e] & 15) << (4 * h));
      }
      if (k.type == GgufType::kQ4_K) {
        gguf::BlockQ4_K b{};
        b.d = st.d;
        b.dmin = st.dmin;
        std::memcpy(b.scales, scales, 12);
        std::memcpy(b.qs, qs, 128);
        Put(b, out);
      } else {
        gguf::BlockQ5_K b{};
        b.d = st.d;
        b.dmin = st.dmin;
        std::memcpy(b.scales, scales, 12);
        std::memcpy(b.qs, qs, 128);
        for (int e = 0; e < gguf::kQK; ++e) {
          b.qh[e % 32] |= static_cast<uint8_t>((c[e] >> 4) << (e / 32));
        }
        Put(b, out);
      }
      return;
    }
    case GgufType::kQ6_K: {
      gguf::BlockQ6_K b{};
      b.d = st.d;
      for (int j = 0; j < 16; ++j) b.scales[j] = static_cast<int8_t>(sign[j] * st.ls[j]);
      for (int e = 0; e < gguf::kQK; ++e) {
        const int H = e / 128, r = e % 128;
        b.ql[64 * H + r % 64] |= static_cast<uint8_t>((c[e] & 15) << (4 * (r / 64)));
        b.qh[32 * H + r % 32] |= static_cast<uint8_t>((c[e] >> 4) << (2 * (r / 32)));
      }
      Put(b, out);
      return;
    }
    default: return;
  }
}

// One block's values, ggml's arithmetic (each product rounded, never fused).
void DecodeBlock(GgufType t, const uint8_t* in, float* y) {
  switch (t) {
    case GgufType::kQ4_0: {
      const auto b = Get<gguf::BlockQ4_0>(in);
      const float d = F16BitsToF32(b.d);
      for (int j = 0; j < 16; ++j) {
        y[j] = d * static_cast<float>((b.qs[j] & 15) - 8);
        y[j + 16] = d * static_cast<float>((b.qs[j] >> 4) - 8);
      }
      return;
    }
    case GgufType::kQ5_0: {
      const auto b = Get<gguf::BlockQ5_0>(in);
      const float d = F16BitsToF32(b.d);
      uint32_t qh;
      std::memcpy(&qh, b.qh, 4);
      for (int e = 0; e < 32; ++e) {
        const int lo = e < 16 ? (b.qs[e] & 15) : (b.qs[e - 16] >> 4);
        const int q = lo | static_cast<int>(((qh >> e) & 1) << 4);
        y[e] = d * static_cast<float>(q - 16);
      }
      return;
    }
    case GgufType::kQ8_0: {
      const auto b = Get<gguf::BlockQ8_0>(in);
      const float d = F16BitsToF32(b.d);
      for (int e = 0; e < 32; ++e) y[e] = static_cast<float>(b.qs[e]) * d;
      return;
    }
    case GgufType::kQ2_K: {
      const auto b = Get<gguf::BlockQ2_K>(in);
      const float d = F16BitsToF32(b.d), dmin = F16BitsToF32(b.dmin);
      for (int e = 0; e < gguf::kQK; ++e) {
        const int j = e / 16, h = e / 128, s = (e / 32) % 4, l = e % 32;
        const float dl = d * static_cast<float>(b.scales[j] & 15);
        const float ml = dmin * static_cast<float>(b.scales[j] >> 4);
        const int q = (b.qs[32 * h + l] >> (2 * s)) & 3;
        y[e] = dl * static_cast<float>(q) - ml;
      }
      return;
    }
    case GgufType::kQ3_K: {
      const auto b = Get<gguf::BlockQ3_K>(in);
      const float d = F16BitsToF32(b.d);
      for (int e = 0; e < gguf::kQK; ++e) {
        const int j = e / 16, h = e / 128, s = (e / 32) % 4, l = e % 32;
        const int sc = ((b.scales[j % 8] >> (4 * (j / 8))) & 15) |
                       (((b.scales[8 + j % 4] >> (2 * (j / 4))) & 3) << 4);
        const float dl = d * static_cast<float>(sc - 32);
        const int lo = (b.qs[32 * h + l] >> (2 * s)) & 3;
        const int hi = (b.hmask[l] >> (e / 32)) & 1;
        y[e] = dl * static_cast<float>(lo - (hi ? 0 : 4));
      }
      return;
    }
    case GgufType::kQ4_K:
    case GgufType::kQ5_K: {
      const bool five = t == GgufType::kQ5_K;
      uint16_t dbits, dminbits;
      std::memcpy(&dbits, in, 2);
      std::memcpy(&dminbits, in + 2, 2);
      const uint8_t* scales = in + 4;
      const uint8_t* qh = five ? in + 16 : nullptr;
      const uint8_t* qs = in + (five ? 48 : 16);
      const float d = F16BitsToF32(dbits), dmin = F16BitsToF32(dminbits);
      for (int j = 0; j < 8; ++j) {
        uint8_t sc, m;
        UnpackScaleMin6(scales, j, &sc, &m);
        const float dl = d * static_cast<float>(sc), ml = dmin * static_cast<float>(m);
        for (int l = 0; l < 32; ++l) {
          const int e = 32 * j + l;
          int q = (qs[32 * (j / 2) + l] >> (4 * (j % 2))) & 15;
          if (five) q |= ((qh[l] >> j) & 1) << 4;
          y[e] = dl * static_cast<float>(q) - ml;
        }
      }
      return;
    }
    case GgufType::kQ6_K: {
      const auto b = Get<gguf::BlockQ6_K>(in);
      const float d = F16BitsToF32(b.d);
      for (int e = 0; e < gguf::kQK; ++e) {
        const int H = e / 128, r = e % 128;
        const int lo = (b.ql[64 * H + r % 64] >> (4 * (r / 64))) & 15;
        const int hi = (b.qh[32 * H + r % 32] >> (2 * (r / 32))) & 3;
        const int j = e / 16;
        const float dl = d * static_cast<float>(b.scales[j]);
        y[e] = dl * static_cast<float>((lo | (hi << 4)) - 32);
      }
      return;
    }
    default: return;
  }
}

// Round to nearest on the fitted grid: one row's codes, stored parameters (one per super-block;
// the row's for per-group types) and group signs.
bool FitRowCodes(const Codec& codec, const quant::Format& f, const float* x, size_t ne0, size_t g,
                 size_t super, std::vector<float>& flipped, std::vector<uint8_t>& codes,
                 std::vector<quant::RowStored>& st, std::vector<quant::RowParams>& p,
                 std::vector<int8_t>& sign) {
  const float* xr = x;
  if (codec.sym) {
    // Symmetric codes run from -bias to bias - 1: each group's larger extreme goes to the
    // negative side, its sign stored in the scale (as ggml's reference does; choosing the
    // sign by both signs' fitted error instead measured the same error on N(0, 0.02) and
    // Student-t weights at every symmetric type, at three times the work).
    for (size_t j = 0; j < ne0 / g; ++j) {
      const auto [lo, hi] = std::minmax_element(xr + j * g, xr + (j + 1) * g);
      sign[j] = *hi > -*lo ? -1 : 1;
      for (size_t i = j * g; i < (j + 1) * g; ++i) flipped[i] = sign[j] * xr[i];
    }
    xr = flipped.data();
  }
  // K-quants: super-blocks of 256, each its own d/dmin (all groups of the row fitted side by
  // side first); the others: the row's groups, each its own f16 scale.
  const bool ok = codec.row ? quant::FitSuperBlocks(f, xr, ne0, g, super, st, p)
                            : quant::FitRow(f, xr, ne0, g, st[0], p[0]);
  for (size_t k = 0; k < ne0 / super; ++k) {
    kernels::QuantizeGroups(xr + k * super, super, g, p[k].inv_scale.data(), p[k].offset.data(),
                            f.qmax, codes.data() + k * super);
  }
  return ok;
}

}  // namespace

uint64_t GgufTensorInfo::num_elements() const {
  uint64_t n = 1;
  for (uint64_t d : shape) n *= d;
  return n;
}

const GgufTypeInfo* FindGgufType(uint32_t id) {
  for (const GgufTypeInfo& t : kTypes) {
    if (t.id == id) return &t;
  }
  return nullptr;
}

std::string_view GgufTypeName(GgufType t) {
  const GgufTypeInfo* info = FindGgufType(static_cast<uint32_t>(t));
  return info ? info->name : "?";
}

std::vector<GgufType> GgufCodecs() {
  std::vector<GgufType> out;
  for (const Codec& c : kCodecs) out.push_back(c.type);
  out.insert(out.end(), {GgufType::kF16, GgufType::kBF16, GgufType::kF32});
  return out;
}

Result<GgufType> ParseGgufType(std::string_view name) {
  std::string up(name);
  for (char& ch : up) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  for (GgufType t : GgufCodecs()) {
    if (GgufTypeName(t) == up) return t;
  }
  std::string known;
  for (GgufType t : GgufCodecs())
    known += (known.empty() ? "" : ", ") + std::string(GgufTypeName(t));
  return Status(StatusCode::kInvalidArgument,
                "unknown GGUF type '" + std::string(name) + "' (supported: " + known + ")");
}

double GgufBitsPerWeight(GgufType t) {
  const GgufTypeInfo* info = FindGgufType(static_cast<uint32_t>(t));
  return info ? 8.0 * info->bytes / info->block : 0.0;
}

bool GgufFits(GgufType t, uint64_t ne0) {
  const GgufTypeInfo* info = FindGgufType(static_cast<uint32_t>(t));
  return info != nullptr && ne0 % info->block == 0;
}

Result<GgufEncoded> GgufEncode(const TensorView& w, GgufType t, const GgufEncodeOptions& options) {
  const std::string name(w.name);
  const GgufTypeInfo* info = FindGgufType(static_cast<uint32_t>(t));
  const Codec* codec = FindCodec(t);
  if (info == nullptr || (codec == nullptr && !IsFloat(t))) {
    return Status(StatusCode::kUnsupported, "tensor '" + name + "': GGUF type " +
                                                std::to_string(static_cast<uint32_t>(t)) +
                                                " is not encoded here");
  }
  if (w.dtype != DType::kF32 && w.dtype != DType::kF16 && w.dtype != DType::kBF16) {
    return Status(StatusCode::kUnsupported,
                  "tensor '" + name + "': only F32, F16 and BF16 tensors are encoded");
  }
  const uint64_t n = w.num_elements();
  const size_t esize = ElementBytes(w.dtype);
  if (n * esize != w.data.size()) {
    return Status(StatusCode::kSizeMismatch, "tensor '" + name + "': shape needs " +
                                                 std::to_string(n * esize) + " bytes, got " +
                                                 std::to_string(w.data.size()));
  }
  const uint64_t ne0 = w.shape.empty() ? 1 : w.shape.back();
  if (ne0 == 0 || n == 0) return GgufEncoded{};
  if (ne0 % info->block != 0) {
    return Status(StatusCode::kInvalidArgument,
                  "tensor '" + name + "': " + std::string(info->name) + " needs a last dimension " +
                      "that is a multiple of " + std::to_string(info->block) + ", got " +
                      std::to_string(ne0));
  }
  const uint64_t rows = n / ne0;
  const uint64_t row_bytes = ne0 / info->block * info->bytes;
  GgufEncoded result;
  std::vector<uint8_t>& out = result.bytes;
  out.resize(rows * row_bytes);
  const bool same = (t == GgufType::kF32 && w.dtype == DType::kF32) ||
                    (t == GgufType::kF16 && w.dtype == DType::kF16) ||
                    (t == GgufType::kBF16 && w.dtype == DType::kBF16);
  if (same) {  // stored as it is: the bytes, no error
    std::memcpy(out.data(), w.data.data(), out.size());
    result.metrics.count = n;
    result.metrics.sqnr_db = INFINITY;
    result.metrics.cosine = 1.0;
    return result;
  }
  if (IsFloat(t)) {
    // Elementwise: converted in flat chunks (a 3x3 convolution's rows are 3 values long).
    constexpr uint64_t kChunk = 1 << 16;
    const uint64_t chunks = (n + kChunk - 1) / kChunk;
    const size_t out_size = ElementBytes(t == GgufType::kF32 ? DType::kF32 : DType::kF16);
    std::vector<quant::RowSums> sums(chunks);
    ParallelFor(chunks, options.threads, [&](size_t begin, size_t end, int) {
      std::vector<float> x(kChunk), y(kChunk);
      for (size_t ch = begin; ch < end; ++ch) {
        const uint64_t i0 = ch * kChunk, len = std::min(kChunk, n - i0);
        kernels::ToF32(w.dtype, w.data.data() + i0 * esize, len, x.data());
        uint8_t* dst = out.data() + i0 * out_size;
        if (t == GgufType::kF32) {
          std::memcpy(dst, x.data(), len * 4);
        } else {
          const DType dt = t == GgufType::kF16 ? DType::kF16 : DType::kBF16;
          kernels::FromF32(dt, x.data(), len, reinterpret_cast<uint16_t*>(dst));
          kernels::ToF32(dt, dst, len, y.data());
        }
        sums[ch] = quant::SumsOf(x.data(), t == GgufType::kF32 ? x.data() : y.data(), len);
      }
    });
    result.metrics = quant::Combine(sums, n);
    return result;
  }
  const GptqFactor* gptq = options.gptq.get();
  if (gptq != nullptr && (gptq->dim != ne0 || gptq->act_order)) {
    return Status(StatusCode::kInvalidArgument,
                  "tensor '" + name + "': input second moments over " + std::to_string(gptq->dim) +
                      " columns" + (gptq->act_order ? " in activation order" : "") +
                      "; GGUF's GPTQ sweeps the " + std::to_string(ne0) +
                      " values of each row in order");
  }
  std::vector<quant::RowSums> sums(rows);
  QuantSpec spec;
  spec.bits = codec->bits;
  spec.group_size = codec->g;
  spec.scheme = codec->sym ? Scheme::kSymmetric : Scheme::kAsymmetric;
  spec.grid = options.grid;
  spec.scales = codec->scales;
  spec.scale_bits = codec->scale_bits;
  quant::Format f(spec);
  f.keep_extremes = true;
  const size_t g = static_cast<size_t>(codec->g);
  std::vector<uint64_t> bad(rows, 0);
  std::vector<uint8_t> overflow(rows, 0);
  ParallelFor(rows, options.threads, [&](size_t begin, size_t end, int) {
    std::vector<float> x(ne0), y(ne0), flipped(ne0);
    std::vector<uint8_t> codes(ne0);
    std::vector<int8_t> sign(ne0 / g, 1);
    std::vector<quant::RowStored> st(1);
    std::vector<quant::RowParams> p(1);
    for (size_t r = begin; r < end; ++r) {
      kernels::ToF32(w.dtype, w.data.data() + r * ne0 * esize, ne0, x.data());
      bad[r] = kernels::CountNonFinite(x.data(), ne0);
      if (bad[r]) continue;
      const size_t super = codec->row ? static_cast<size_t>(codec->row) : ne0;
      if (gptq != nullptr) {
        // Codes that minimise the layer's output error (quant/gptq_blocks.h).
        std::copy(x.begin(), x.end(), flipped.begin());
        if (!quant::GptqSweepBlocks(f, g, super, *gptq, flipped.data(), ne0, codes.data(), st,
                                    sign.data())) {
          overflow[r] = 1;
        }
      } else {
        if (!FitRowCodes(*codec, f, x.data(), ne0, g, super, flipped, codes, st, p, sign)) {
          overflow[r] = 1;
        }
      }
      uint8_t* dst = out.data() + r * row_bytes;
      for (size_t b = 0; b < ne0 / info->block; ++b) {
        const size_t e0 = b * info->block, k = e0 / super;
        PackBlock(*codec, codes.data() + e0, st[k], (e0 - k * super) / g,
                  sign.data() + k * (super / g), dst + b * info->bytes);
      }
      // Measured as a GGUF reader will decode it.
      for (uint64_t b = 0; b < ne0 / info->block; ++b) {
        DecodeBlock(t, dst + b * info->bytes, y.data() + b * info->block);
      }
      sums[r] = quant::SumsOf(x.data(), y.data(), ne0);
    }
  });
  AQ_RETURN_IF_ERROR(quant::NonFiniteStatus(name, bad));
  if (std::find(overflow.begin(), overflow.end(), 1) != overflow.end()) {
    return Status(StatusCode::kScaleOverflow, "tensor '" + name + "': values too large for " +
                                                  std::string(info->name) + "'s f16 scales");
  }
  result.metrics = quant::Combine(sums, n);
  return result;
}

Result<GgufType> GgufTypeOf(const QuantizedView& q, std::string_view name) {
  const QuantSpec& s = q.spec;
  const bool sym = s.scheme == Scheme::kSymmetric;
  if (s.group_size == 32 && q.cols % 32 == 0) {
    if (sym && s.scales == ScaleStorage::kF16 && s.bits == 8) return GgufType::kQ8_0;
    if (sym && s.scales == ScaleStorage::kF16 && s.bits == 4) return GgufType::kQ4_0;
    if (!sym && s.scales == ScaleStorage::kCoded && s.scale_bits == 6 && s.bits == 4 &&
        q.cols % gguf::kQK == 0) {
      return GgufType::kQ4_K;
    }
  }
  return Status(StatusCode::kUnsupported,
                "tensor '" + std::string(name) + "' (" + s.ToString() + ", rows of " +
                    std::to_string(q.cols) +
                    ") has no GGUF type with the same codes (those that map: int8-sym-g32-f16 "
                    "-> Q8_0, int4-sym-g32-f16 -> Q4_0, int4-asym-g32-q6 with rows a multiple "
                    "of 256 -> Q4_K); quantize from the checkpoint with --format gguf instead");
}

Result<std::vector<uint8_t>> GgufRepack(const QuantizedView& q, std::string_view name) {
  AQ_RETURN_IF_ERROR(q.Validate());
  AQ_ASSIGN_OR_RETURN(const GgufType t, GgufTypeOf(q, name));
  const Codec& codec = *FindCodec(t);
  const GgufTypeInfo& info = *FindGgufType(static_cast<uint32_t>(t));
  const quant::Layout l = quant::MakeLayout(q.spec, q.rows, q.cols);
  const uint64_t row_bytes = q.cols / info.block * info.bytes;
  std::vector<uint8_t> out(q.rows * row_bytes);
  std::vector<uint8_t> codes(q.cols);
  const std::vector<int8_t> sign(q.cols / 16 + 1, 1);
  quant::RowStored st, block;
  const quant::Format f(q.spec);
  for (uint64_t r = 0; r < q.rows; ++r) {
    quant::LoadRow(q, l, r, st);
    kernels::UnpackCodes(q.codes.data() + r * l.code_row_bytes, q.cols, q.spec.bits, codes.data());
    for (uint64_t b = 0; b < q.cols / info.block; ++b) {
      uint8_t* dst = out.data() + r * row_bytes + b * info.bytes;
      const size_t g0 = b * info.block / static_cast<size_t>(codec.g);
      if (t == GgufType::kQ4_K) {
        // The row's super-scales in every super-block, its 8 groups' codes.
        block.Resize(f, gguf::kQK / 32);
        block.d = st.d;
        block.dmin = st.dmin;
        std::copy_n(st.ls.begin() + static_cast<std::ptrdiff_t>(g0), 8, block.ls.begin());
        std::copy_n(st.lm.begin() + static_cast<std::ptrdiff_t>(g0), 8, block.lm.begin());
        PackBlock(codec, codes.data() + b * info.block, block, 0, sign.data(), dst);
      } else {
        PackBlock(codec, codes.data() + b * info.block, st, g0, sign.data(), dst);
      }
    }
  }
  return out;
}

Status GgufDecode(GgufType t, std::span<const uint8_t> bytes, uint64_t n, float* out, int threads) {
  const GgufTypeInfo* info = FindGgufType(static_cast<uint32_t>(t));
  if (info == nullptr || (FindCodec(t) == nullptr && !IsFloat(t))) {
    return Status(StatusCode::kUnsupported, "GGUF type " + std::string(info ? info->name : "?") +
                                                " (" + std::to_string(static_cast<uint32_t>(t)) +
                                                ") is not decoded here");
  }
  if (n % info->block != 0 || n / info->block * info->bytes != bytes.size()) {
    return Status(StatusCode::kSizeMismatch, std::to_string(n) + " values of " +
                                                 std::string(info->name) + " need " +
                                                 std::to_string(n / info->block * info->bytes) +
                                                 " bytes, got " + std::to_string(bytes.size()));
  }
  const uint64_t blocks = n / info->block;
  // Chunks of blocks: 64 Ki values each, so threads share large tensors.
  const uint64_t per = std::max<uint64_t>(1, 65536 / info->block);
  const uint64_t chunks = (blocks + per - 1) / per;
  ParallelFor(chunks, threads, [&](size_t begin, size_t end, int) {
    for (size_t ch = begin; ch < end; ++ch) {
      const uint64_t b0 = ch * per, b1 = std::min(blocks, b0 + per);
      const uint8_t* src = bytes.data() + b0 * info->bytes;
      float* dst = out + b0 * info->block;
      if (IsFloat(t)) {
        const DType dt = t == GgufType::kF32   ? DType::kF32
                         : t == GgufType::kF16 ? DType::kF16
                                               : DType::kBF16;
        kernels::ToF32(dt, src, (b1 - b0), dst);
        continue;
      }
      for (uint64_t b = b0; b < b1; ++b) {
        DecodeBlock(t, src, dst);
        src += info->bytes;
        dst += info->block;
      }
    }
  });
  return Status::OK();
}

}  // namespace arrowquant
