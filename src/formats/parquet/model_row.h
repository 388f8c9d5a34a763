// One row of the model file's schema: what a tensor (chunk) is, and its payload slices.
// The writer cuts a TensorRecord into chunks (TensorRows) and turns each into Arrow columns
// (BuildRow); the payload columns borrow the record's bytes.
#pragma once

#include <arrow/api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "arrowquant/model_file.h"

namespace arrowquant::pq {

inline constexpr int kPayloadColumns = 4;  // data, scales, zero_points, super_scales
extern const char* const kPayloadColumnNames[kPayloadColumns];

// The columns every chunk of a tensor repeats.
struct TensorFields {
  std::vector<uint64_t> shape;
  std::string source_dtype, quant_type, scheme, method, scale_dtype;
  int bits = 0, group = 0, axis = -1;
  uint64_t params = 1;
  uint64_t source_bytes = 0;  // of the tensor this was made from, for the file's totals
};

struct RowChunk {
  int index = 0, count = 1;
  const uint8_t* payload[kPayloadColumns] = {};
  int64_t sizes[kPayloadColumns] = {};
  uint64_t bytes() const {
    return static_cast<uint64_t>(sizes[0] + sizes[1] + sizes[2] + sizes[3]);
  }
};

struct TensorRows {
  TensorFields fields;
  std::vector<RowChunk> chunks;  // whole rows of a quantized tensor, whole elements of a raw one
};

// Checks the record (a quantized tensor's layout, a raw tensor's byte count against its shape)
// and splits its payload into chunks of at most about max_chunk_bytes; `where` names it in errors.
Result<TensorRows> SplitTensor(const TensorRecord& r, uint64_t max_chunk_bytes,
                               const std::string& where);

// The row's columns in schema order; the payload columns borrow `chunk`'s bytes (no copy).
Result<std::vector<std::shared_ptr<arrow::Array>>> BuildRow(const TensorRecord& r,
                                                            const TensorFields& f,
                                                            const RowChunk& chunk,
                                                            const ModelMetadata& meta,
                                                            const std::string& where);

}  // namespace arrowquant::pq
