// Per-layer, per-timestep activation summaries (calibration.h). Bounded memory: per timestep,
// three floats per channel and a fixed-size histogram, whatever the number of values seen.
#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "arrowquant/calibration.h"
#include "core/parallel.h"
#include "kernels/row_kernels.h"

namespace arrowquant {

namespace {

// Without branches (signs and tiny values come in random order): the bin of the float with
// bits u.
inline int BinOfBits(uint32_t u) {
  using H = ActivationHistogram;
  const int exp = static_cast<int>((u >> 23) & 0xffu) - 127;
  // 16 bins per octave from the top 4 mantissa bits: log-linear, like an HDR histogram.
  const int idx =
      std::min((exp - H::kMinExponent) * H::kBinsPerOctave + static_cast<int>((u >> 19) & 0xfu),
               H::kBinsPerSign - 1);
  const int signed_bin = H::kZeroBin + (1 + idx) * (1 - 2 * static_cast<int>(u >> 31));
  return exp < H::kMinExponent ? H::kZeroBin : signed_bin;  // +-0 and subnormals: zero
}

}  // namespace

int ActivationHistogram::BinOf(float x) {
  return BinOfBits(std::bit_cast<uint32_t>(x));
}

double ActivationHistogram::BinValue(int bin) {
  if (bin == kZeroBin) return 0.0;
  const int idx = (bin > kZeroBin ? bin - kZeroBin : kZeroBin - bin) - 1;
  const int exp = idx / kBinsPerOctave + kMinExponent;
  const double m = (idx % kBinsPerOctave + 0.5) / kBinsPerOctave;
  const double v = std::ldexp(1.0 + m, exp);
  return bin > kZeroBin ? v : -v;
}

Result<std::unique_ptr<ActivationCollector>> ActivationCollector::Make(uint64_t channels) {
  if (channels == 0 || channels > (1u << 24)) {
    return Status(StatusCode::kInvalidArgument, "activation collector: channel count " +
                                                    std::to_string(channels) + " outside 1..2^24");
  }
  return std::unique_ptr<ActivationCollector>(new ActivationCollector(channels));
}

static TimestepActivationStats EmptyStats(int32_t t, uint64_t channels) {
  TimestepActivationStats s;
  s.timestep = t;
  s.channel_min.assign(channels, std::numeric_limits<float>::infinity());
  s.channel_max.assign(channels, -std::numeric_limits<float>::infinity());
  s.channel_absmax.assign(channels, 0.0f);
  s.histogram.assign(ActivationHistogram::kNumBins, 0);
  return s;
}

namespace {

// One thread's share of an Add: rows [o0, o1) of the [outer, channels, inner] layout.
struct Partial {
  std::vector<uint64_t> histogram;
  std::vector<float> mn, mx;
  bool special = false;  // an Inf or NaN was seen
};

void Accumulate(const float* values, uint64_t o0, uint64_t o1, uint64_t C, uint64_t inner,
                Partial& p) {
  constexpr size_t kBins = ActivationHistogram::kNumBins;
  // The histogram in memory order: four interleaved 32-bit copies (they fit L1), so that runs
  // of equal bins do not serialize on one counter; flushed before they could overflow.
  constexpr size_t kFlush = size_t{1} << 30;
  std::vector<uint32_t> part(4 * kBins, 0);
  const size_t begin = o0 * C * inner, end = o1 * C * inner;
  uint32_t special = 0;
  for (size_t i0 = begin; i0 < end; i0 += kFlush) {
    const size_t i1 = std::min(end, i0 + kFlush);
    for (size_t i = i0; i < i1; ++i) {
      const uint32_t u = std::bit_cast<uint32_t>(values[i]);
      special |= static_cast<uint32_t>(((u >> 23) & 0xffu) == 0xffu);  // all-ones exponent
      ++part[(i & 3) * kBins + static_cast<size_t>(BinOfBits(u))];
    }
    for (size_t k = 0; k < 4; ++k) {
      for (size_t b = 0; b < kBins; ++b) p.histogram[b] += std::exchange(part[k * kBins + b], 0);
    }
  }
  p.special = special != 0;
  float* mn = p.mn.data();
  float* mx = p.mx.data();
  if (inner == 1) {  // [rows, channels]: a row updates every channel, elementwise
    for (uint64_t o = o0; o < o1; ++o) {
      const float* row = values + o * C;
      for (uint64_t c = 0; c < C; ++c) {
        mn[c] = row[c] < mn[c] ? row[c] : mn[c];
        mx[c] = row[c] > mx[c] ? row[c] : mx[c];
      }
    }
  } else {  // [batch, channels, positions]: each channel's positions are one contiguous run
    for (uint64_t o = o0; o < o1; ++o) {
      for (uint64_t c = 0; c < C; ++c) {
        float lo, hi;
        kernels::GroupMinMax(values + (o * C + c) * inner, inner, inner, &lo, &hi);
        mn[c] = std::min(mn[c], lo);
        mx[c] = std::max(mx[c], hi);
      }
    }
  }
}

}  // namespace

Status ActivationCollector::Add(int32_t timestep, std::span<const float> values,
                                const ActivationLayout& layout, int threads) {
  if (layout.channels != channels_) {
    return Status(StatusCode::kInvalidArgument,
                  "activation has " + std::to_string(layout.channels) + " channels, expected " +
                      std::to_string(channels_));
  }
  if (layout.outer * layout.channels * layout.inner != values.size()) {
    return Status(StatusCode::kInvalidArgument, "activation layout does not match its size");
  }
  if (values.empty()) return Status::OK();
  const uint64_t C = channels_, inner = layout.inner;
  const uint64_t parts =
      std::clamp<uint64_t>(static_cast<uint64_t>(std::max(threads, 1)), 1, layout.outer);
  std::vector<Partial> ps(parts);
  for (Partial& p : ps) {
    p.histogram.assign(ActivationHistogram::kNumBins, 0);
    p.mn.assign(C, std::numeric_limits<float>::infinity());
    p.mx.assign(C, -std::numeric_limits<float>::infinity());
  }
  ParallelForEach(parts, threads, [&](size_t k) {
    Accumulate(values.data(), layout.outer * k / parts, layout.outer * (k + 1) / parts, C, inner,
               ps[k]);
  });
  for (const Partial& p : ps) {
    if (!p.special) continue;
    for (size_t i = 0; i < values.size(); ++i) {
      if (!std::isfinite(values[i])) {
        return Status(StatusCode::kNonFinite, "activation value " + std::to_string(values[i]) +
                                                  " in channel " + std::to_string((i / inner) % C) +
                                                  " at timestep " + std::to_string(timestep) +
                                                  ": calibration needs finite activations");
      }
    }
  }
  auto [it, fresh] = stats_.try_emplace(timestep);
  if (fresh) it->second = EmptyStats(timestep, channels_);
  TimestepActivationStats& s = it->second;
  for (const Partial& p : ps) {
    for (size_t b = 0; b < p.histogram.size(); ++b) s.histogram[b] += p.histogram[b];
    for (uint64_t c = 0; c < C; ++c) {
      s.channel_min[c] = std::min(s.channel_min[c], p.mn[c]);
      s.channel_max[c] = std::max(s.channel_max[c], p.mx[c]);
    }
  }
  for (uint64_t c = 0; c < C; ++c) {
    s.channel_absmax[c] = std::max(-s.channel_min[c], s.channel_max[c]);
  }
  s.count += values.size();
  return Status::OK();
}

Status ActivationCollector::Merge(const TimestepActivationStats& in) {
  if (in.channel_min.size() != channels_ || in.channel_max.size() != channels_ ||
      in.channel_absmax.size() != channels_ ||
      in.histogram.size() != static_cast<size_t>(ActivationHistogram::kNumBins)) {
    return Status(StatusCode::kInvalidArgument,
                  "saved activation statistics do not match this layer (channels or bins)");
  }
  auto [it, fresh] = stats_.try_emplace(in.timestep);
  if (fresh) it->second = EmptyStats(in.timestep, channels_);
  TimestepActivationStats& s = it->second;
  for (uint64_t c = 0; c < channels_; ++c) {
    s.channel_min[c] = std::min(s.channel_min[c], in.channel_min[c]);
    s.channel_max[c] = std::max(s.channel_max[c], in.channel_max[c]);
    s.channel_absmax[c] = std::max(s.channel_absmax[c], in.channel_absmax[c]);
  }
  for (size_t b = 0; b < s.histogram.size(); ++b) s.histogram[b] += in.histogram[b];
  s.count += in.count;
  return Status::OK();
}

ActivationStats ActivationCollector::Overall() const {
  ActivationStats out;
  out.min.assign(channels_, 0.0f);
  out.max.assign(channels_, 0.0f);
  out.absmax.assign(channels_, 0.0f);
  bool first = true;
  for (const auto& [t, s] : stats_) {
    for (uint64_t c = 0; c < channels_; ++c) {
      out.min[c] = first ? s.channel_min[c] : std::min(out.min[c], s.channel_min[c]);
      out.max[c] = first ? s.channel_max[c] : std::max(out.max[c], s.channel_max[c]);
      out.absmax[c] = std::max(out.absmax[c], s.channel_absmax[c]);
    }
    first = false;
  }
  return out;
}

}  // namespace arrowquant
