#include "pipeline/keep.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#include "kernels/row_kernels.h"

namespace arrowquant {
namespace {

constexpr double kKeepTolerance = 1.0 / 256;

struct RoundTrip {
  uint64_t overflow = 0, flushed = 0;
  double rel_rmse = 0;
};

RoundTrip MeasureRoundTrip(const std::vector<float>& f, DType dtype, std::vector<uint16_t>& buf) {
  RoundTrip r;
  buf.resize(f.size());
  kernels::FromF32(dtype, f.data(), f.size(), buf.data());
  std::vector<float> back(f.size());
  kernels::ToF32(dtype, buf.data(), f.size(), back.data());
  double err = 0, ref = 0;
  for (size_t i = 0; i < f.size(); ++i) {
    if (!std::isfinite(f[i])) continue;
    if (!std::isfinite(back[i])) {
      ++r.overflow;
      continue;
    }
    if (f[i] != 0.0f && back[i] == 0.0f) ++r.flushed;
    const double d = static_cast<double>(f[i]) - back[i];
    err += d * d;
    ref += static_cast<double>(f[i]) * f[i];
  }
  r.rel_rmse = ref > 0 ? std::sqrt(err / ref) : 0.0;
  return r;
}

std::string Loss(DType cand, const RoundTrip& r) {
  char rel[32];
  std::snprintf(rel, sizeof rel, "%.3g", r.rel_rmse);
  return std::string(KeptName(cand)) + " would lose values (" + std::to_string(r.overflow) +
         " overflow, " + std::to_string(r.flushed) + " flushed to zero, relative error " + rel +
         ")";
}

}  // namespace

const char* KeptName(DType d) {
  return Traits(d).safetensors_name.data();
}

KeptTensor KeepTensor(const TensorView& t, DType keep) {
  KeptTensor out;
  out.dtype = t.dtype;
  if (Traits(t.dtype).quantizable && t.dtype != keep) {
    std::vector<float> f(t.num_elements());
    kernels::ToF32(t.dtype, t.data.data(), f.size(), f.data());
    if (keep == DType::kF32) {
      out.dtype = keep;
      out.bytes.resize(f.size() * 4);
      std::memcpy(out.bytes.data(), f.data(), out.bytes.size());
      return out;
    }
    std::vector<uint16_t> buf;
    std::string lost;
    std::vector<DType> candidates = {keep};
    if (keep != DType::kBF16) candidates.push_back(DType::kBF16);
    for (DType cand : candidates) {
      if (cand == t.dtype) break;  // the source dtype holds itself
      const RoundTrip r = MeasureRoundTrip(f, cand, buf);
      if (r.overflow == 0 && r.rel_rmse <= kKeepTolerance) {
        out.dtype = cand;
        out.bytes.resize(buf.size() * 2);
        std::memcpy(out.bytes.data(), buf.data(), out.bytes.size());
        break;
      }
      lost += (lost.empty() ? "" : "; ") + Loss(cand, r);
    }
    if (!lost.empty()) out.note = lost + ": kept as " + KeptName(out.dtype);
  }
  if (out.dtype == t.dtype) out.bytes.assign(t.data.begin(), t.data.end());
  return out;
}

}  // namespace arrowquant
