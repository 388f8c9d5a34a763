// Writes a checkpoint's tensors, unchanged, as a Parquet table (one row per tensor: name,
// dtype, shape, data). This is the raw-tensor form of the model file; the quantized columns
// of the Extended Parquet V2 schema build on it. Arrow stays behind this header.
#pragma once

#include <cstdint>
#include <string>

#include "arrowquant/checkpoint.h"
#include "arrowquant/status.h"

namespace arrowquant {

// Written to a temporary name beside `out_path` and renamed when complete. Arrow's process-wide
// thread pools are neither used nor resized (the caller's pyarrow keeps its settings).
Status WriteTensorTable(const Checkpoint& checkpoint, const std::string& out_path);

}  // namespace arrowquant
