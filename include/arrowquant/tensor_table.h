// Writes a checkpoint's tensors, unchanged, as a Parquet table (one row per tensor: name,
// dtype, shape, data). This is the raw-tensor form of the model file; the quantized columns
// of the Extended Parquet V2 schema build on it. Arrow stays behind this header.
#pragma once

#include <cstdint>
#include <string>

#include "arrowquant/checkpoint.h"
#include "arrowquant/status.h"

namespace arrowquant {

struct TensorTableOptions {
  int arrow_threads = 1;  // caps Arrow's own CPU pool; results do not depend on it
};

// Written to a temporary name beside `out_path` and renamed when complete.
Status WriteTensorTable(const Checkpoint& checkpoint, const std::string& out_path,
                        const TensorTableOptions& options = {});

}  // namespace arrowquant
