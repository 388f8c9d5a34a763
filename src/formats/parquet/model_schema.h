// Column names and Arrow types of the model file (docs/format.md documents each field), and the
// seed project's base V2 schema read for compatibility.
#pragma once

#include <arrow/api.h>

#include <memory>
#include <string>

#include "arrowquant/status.h"

namespace arrowquant::pq {

namespace col {
inline constexpr const char* kName = "layer_name";
inline constexpr const char* kComponent = "component";
inline constexpr const char* kChunk = "chunk_index";
inline constexpr const char* kNumChunks = "num_chunks";
inline constexpr const char* kShape = "shape";
inline constexpr const char* kDType = "dtype";
inline constexpr const char* kQuantType = "quant_type";
inline constexpr const char* kBits = "bits";
inline constexpr const char* kScheme = "scheme";
inline constexpr const char* kMethod = "method";
inline constexpr const char* kScaleDType = "scale_dtype";
inline constexpr const char* kGroupSize = "group_size";
inline constexpr const char* kAxis = "quant_axis";
inline constexpr const char* kData = "data";
inline constexpr const char* kScales = "scales";
inline constexpr const char* kZeros = "zero_points";
inline constexpr const char* kSuper = "super_scales";
inline constexpr const char* kNumParams = "num_params";
inline constexpr const char* kCosine = "cosine";
inline constexpr const char* kSqnr = "sqnr_db";
inline constexpr const char* kRelRmse = "rel_rmse";
inline constexpr const char* kIsDiffusion = "is_diffusion_model";
inline constexpr const char* kModality = "modality";
inline constexpr const char* kTimeGroups = "time_groups";
inline constexpr const char* kTimeBounds = "time_group_bounds";
inline constexpr const char* kActBits = "act_bits";
inline constexpr const char* kActScales = "act_scales";
inline constexpr const char* kActZeros = "act_zero_points";
inline constexpr const char* kEqScales = "equalization_scales";
inline constexpr const char* kSmoothAlpha = "smoothing_alpha";
inline constexpr const char* kActMin = "act_min";
inline constexpr const char* kActMax = "act_max";
inline constexpr const char* kActAbsMax = "act_absmax";
}  // namespace col

// The binary payload columns: never dictionary-encoded, no statistics, no compression.
bool IsPayloadColumn(const std::string& name);

std::shared_ptr<arrow::Schema> ModelSchema();

// Key/value metadata keys of the file footer.
namespace key {
inline constexpr const char* kFormat = "arrowquant.format";
inline constexpr const char* kVersion = "arrowquant.format_version";
inline constexpr const char* kTool = "arrowquant.tool_version";
inline constexpr const char* kRecipe = "arrowquant.recipe";
inline constexpr const char* kSource = "arrowquant.source";
inline constexpr const char* kModality = "arrowquant.modality";
inline constexpr const char* kDiffusion = "arrowquant.is_diffusion_model";
inline constexpr const char* kCreated = "arrowquant.created";
inline constexpr const char* kTotals = "arrowquant.totals";
// In each file of a dataset: its index (1-based), which its name repeats.
inline constexpr const char* kDatasetFile = "arrowquant.dataset_file";
}  // namespace key

Status FromArrow(const arrow::Status& st, const std::string& context,
                 StatusCode code = StatusCode::kIoError);

}  // namespace arrowquant::pq
