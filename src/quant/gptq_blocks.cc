#include "quant/gptq_blocks.h"

#include <algorithm>

#include "kernels/round.h"

namespace arrowquant::quant {
namespace {

// The larger extreme of g values goes to the negative side: -1 when the maximum is larger.
int8_t SignOf(const float* x, size_t g) {
  const auto [lo, hi] = std::minmax_element(x, x + g);
  return *hi > -*lo ? -1 : 1;
}

}  // namespace

bool GptqSweepBlocks(const Format& f, size_t g, size_t super, const GptqFactor& factor, float* x,
                     size_t n, uint8_t* codes, std::vector<RowStored>& st, int8_t* sign) {
  const size_t per = super / g;
  const bool blocks = f.spec.scales == ScaleStorage::kCoded;
  st.resize(n / super);
  for (RowStored& s : st) s.Resize(f, per);
  for (size_t c = 0; c < n; ++c) {
    if (factor.dead[c]) x[c] = 0.0f;  // an input that never varied: its weights do not matter
  }
  std::vector<float> flipped(super);
  std::vector<RowStored> one;
  std::vector<RowParams> p;
  bool ok = true;
  float scale = 0, offset = 0, inv = 0, sg = 1;
  for (const BlockFactor& bf : factor.blocks) {
    for (uint64_t jj = 0; jj < bf.m; ++jj) {
      const uint64_t j = bf.c0 + jj;
      const size_t k = j / super, gi = (j % super) / g;
      if (j % g == 0) {
        const size_t len = blocks && j % super == 0 ? super : g;
        for (size_t i = 0; i < len; i += g) {
          const int8_t s = f.sym ? SignOf(x + j + i, g) : int8_t{1};
          sign[(j + i) / g] = s;
          for (size_t t = i; t < i + g; ++t) flipped[t] = static_cast<float>(s) * x[j + t];
        }
        if (len == super && blocks) {
          ok &= FitSuperBlocks(f, flipped.data(), super, g, super, one, p);
          st[k] = one[0];
        } else {
          ok &= FitGroup(f, flipped.data(), g, st[k], gi);
        }
        DecodeGroup(f, st[k], gi, &scale, &offset);
        inv = InvScale(scale);
        const int8_t group_sign = sign[j / g];
        sg = group_sign;
      }
      // The kernels' arithmetic (kernels::QuantizeGroups), on the flipped value.
      const float q = kernels::ClampRound((sg * x[j] + offset) * inv, f.qmax);
      codes[j] = static_cast<uint8_t>(q);
      const float* urow = bf.u.data() + jj * bf.m;
      const float err = (x[j] - sg * (q * scale - offset)) / urow[jj];
      float* rest = x + j + 1;
      for (uint64_t kk = jj + 1; kk < bf.m; ++kk) rest[kk - jj - 1] -= err * urow[kk];
    }
  }
  return ok;
}

}  // namespace arrowquant::quant
