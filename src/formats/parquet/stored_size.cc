// What a quantized tensor adds to a model file, as the writer stores it: a size budget counts
// these bytes, not the uncompressed buffers (coded scales of some models compress by a quarter).
#include <arrow/util/compression.h>

#include <algorithm>
#include <vector>

#include "arrowquant/model_file.h"
#include "formats/parquet/model_schema.h"

namespace arrowquant {

Result<uint64_t> StoredPayloadBytes(const QuantizedTensor& q) {
  // The writer's codec and level for the scale columns (model_writer.cc); codes are stored as
  // they are.
  auto codec = arrow::util::Codec::Create(arrow::Compression::ZSTD);
  if (!codec.ok()) return pq::FromArrow(codec.status(), "zstd", StatusCode::kInternal);
  uint64_t total = q.codes.size();
  std::vector<uint8_t> buf;
  for (const std::vector<uint8_t>* b : {&q.scales, &q.zeros, &q.super_scales}) {
    if (b->empty()) continue;
    const int64_t len = static_cast<int64_t>(b->size());
    buf.resize(static_cast<size_t>((*codec)->MaxCompressedLen(len, b->data())));
    auto n = (*codec)->Compress(len, b->data(), static_cast<int64_t>(buf.size()), buf.data());
    if (!n.ok()) return pq::FromArrow(n.status(), "compressing scales", StatusCode::kInternal);
    total += static_cast<uint64_t>(std::min<int64_t>(*n, len));
  }
  return total;
}

}  // namespace arrowquant
