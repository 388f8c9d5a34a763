// Per-layer, per-timestep activation summaries (calibration.h). Bounded memory: per timestep,
// three floats per channel and a fixed-size histogram, whatever the number of values seen.
#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <string>

#include "arrowquant/calibration.h"

namespace arrowquant {

int ActivationHistogram::BinOf(float x) {
  const uint32_t u = std::bit_cast<uint32_t>(x);
  const int exp = static_cast<int>((u >> 23) & 0xffu) - 127;
  if (exp < kMinExponent) return kZeroBin;  // includes +-0 and subnormals
  // 16 bins per octave from the top 4 mantissa bits: log-linear, like an HDR histogram.
  int idx = (exp - kMinExponent) * kBinsPerOctave + static_cast<int>((u >> 19) & 0xfu);
  idx = std::min(idx, kBinsPerSign - 1);
  return (u >> 31) ? kZeroBin - 1 - idx : kZeroBin + 1 + idx;
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

Status ActivationCollector::Add(int32_t timestep, std::span<const float> values,
                                const ActivationLayout& layout) {
  if (layout.channels != channels_) {
    return Status(StatusCode::kInvalidArgument,
                  "activation has " + std::to_string(layout.channels) + " channels, expected " +
                      std::to_string(channels_));
  }
  if (layout.outer * layout.channels * layout.inner != values.size()) {
    return Status(StatusCode::kInvalidArgument, "activation layout does not match its size");
  }
  if (values.empty()) return Status::OK();
  auto [it, fresh] = stats_.try_emplace(timestep);
  if (fresh) it->second = EmptyStats(timestep, channels_);
  TimestepActivationStats& s = it->second;
  const uint64_t C = channels_, inner = layout.inner;
  for (uint64_t o = 0; o < layout.outer; ++o) {
    for (uint64_t c = 0; c < C; ++c) {
      const float* p = values.data() + (o * C + c) * inner;
      float mn = s.channel_min[c], mx = s.channel_max[c];
      for (uint64_t i = 0; i < inner; ++i) {
        const float v = p[i];
        if (!std::isfinite(v)) {
          return Status(StatusCode::kNonFinite, "activation value " + std::to_string(v) +
                                                    " in channel " + std::to_string(c) +
                                                    " at timestep " + std::to_string(timestep) +
                                                    ": calibration needs finite activations");
        }
        mn = std::min(mn, v);
        mx = std::max(mx, v);
        ++s.histogram[static_cast<size_t>(ActivationHistogram::BinOf(v))];
      }
      s.channel_min[c] = mn;
      s.channel_max[c] = mx;
      s.channel_absmax[c] = std::max(-mn, mx);
    }
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
