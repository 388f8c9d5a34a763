// Tensors kept unquantized: stored in the job's keep dtype only while that holds their values.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "arrowquant/dtype.h"
#include "arrowquant/tensor.h"

namespace arrowquant {

struct KeptTensor {
  std::vector<std::byte> bytes;
  DType dtype = DType::kF32;
  std::string note;  // why it is not in the keep dtype, when it is not; else empty
};

// A kept float tensor goes to `keep` when the round trip loses at most 2^-8 relative RMSE (bf16's
// worst-case rounding of a normal value, so bf16 holds any tensor within its range) and nothing
// overflows to inf. Otherwise (tiny biases that f16 flushes to zero, values beyond 65504) to BF16,
// and to its source dtype if BF16 does not hold it either. Non-float tensors are copied as they
// are.
KeptTensor KeepTensor(const TensorView& t, DType keep);

// The name the report and the file use for a kept dtype ("F16", "BF16", ...).
const char* KeptName(DType d);

}  // namespace arrowquant
