#include "formats/parquet/model_schema.h"

namespace arrowquant::pq {

bool IsPayloadColumn(const std::string& name) {
  return name == col::kData || name == col::kScales || name == col::kZeros || name == col::kSuper;
}

std::shared_ptr<arrow::Schema> ModelSchema() {
  using arrow::field;
  const auto f32list = arrow::list(arrow::float32());
  const auto i32list = arrow::list(arrow::int32());
  static const auto schema = arrow::schema({
      field(col::kName, arrow::utf8(), false),
      field(col::kComponent, arrow::utf8(), false),
      field(col::kChunk, arrow::int32(), false),
      field(col::kNumChunks, arrow::int32(), false),
      field(col::kShape, arrow::list(arrow::int64()), false),
      field(col::kDType, arrow::utf8(), false),
      field(col::kQuantType, arrow::utf8(), false),
      field(col::kBits, arrow::int8(), false),
      field(col::kScheme, arrow::utf8(), false),
      field(col::kMethod, arrow::utf8(), false),
      field(col::kScaleDType, arrow::utf8(), false),
      field(col::kGroupSize, arrow::int32(), false),
      field(col::kAxis, arrow::int32(), false),
      field(col::kData, arrow::large_binary(), false),
      field(col::kScales, arrow::large_binary(), false),
      field(col::kZeros, arrow::large_binary(), false),
      field(col::kSuper, arrow::large_binary(), false),
      field(col::kNumParams, arrow::int64(), false),
      field(col::kCosine, arrow::float64(), true),
      field(col::kSqnr, arrow::float64(), true),
      field(col::kRelRmse, arrow::float64(), true),
      field(col::kIsDiffusion, arrow::boolean(), false),
      field(col::kModality, arrow::utf8(), false),
      field(col::kTimeGroups, arrow::int32(), true),
      field(col::kTimeBounds, i32list, true),
      field(col::kActBits, arrow::int8(), true),
      field(col::kActScales, f32list, true),
      field(col::kActZeros, i32list, true),
      field(col::kEqScales, f32list, true),
      field(col::kSmoothAlpha, arrow::float32(), true),
      field(col::kActMin, f32list, true),
      field(col::kActMax, f32list, true),
      field(col::kActAbsMax, f32list, true),
  });
  return schema;
}

Status FromArrow(const arrow::Status& st, const std::string& context, StatusCode code) {
  if (st.ok()) return Status::OK();
  return Status(code, context + ": " + st.ToString());
}

}  // namespace arrowquant::pq
