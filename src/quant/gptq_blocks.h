// GPTQ's sweep for formats whose scales belong to blocks of a row rather than to the whole row:
// GGUF's block types (Q4_0's f16 scale per 32 values, Q4_K's super-scales per 256). The layer
// output error tr((W - Q) H (W - Q)^T) is minimised as in gptq.h; a super-block's scales are
// fitted when its first column arrives, on its values as updated so far, and each later group
// of it is refitted under those super-scales when its own first column arrives.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "quant/gptq_factor.h"
#include "quant/group_fit.h"

namespace arrowquant::quant {

// One row x of n values (updated in place: the sweep's working copy; columns whose input never
// varied are zeroed) with groups of g and super-blocks of `super` values (kCoded formats; for
// kF16/kF32 pass super = n: one RowStored for the row). Symmetric formats fit each group as
// sign * x, its larger extreme on the codes' longer negative side (sign[n / g], as the GGUF
// encoder's round-to-nearest path). Out: codes[n], st[n / super]. The factor's columns must be
// in order (no activation order). Returns false if a scale does not fit its storage.
bool GptqSweepBlocks(const Format& f, size_t g, size_t super, const GptqFactor& factor, float* x,
                     size_t n, uint8_t* codes, std::vector<RowStored>& st, int8_t* sign);

}  // namespace arrowquant::quant
