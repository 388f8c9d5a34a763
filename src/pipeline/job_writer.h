// The model file (or dataset) a job writes: its metadata (tool, recipe, source, modality) in one
// place, for a whole run, a part of one and the merge of the parts alike.
#pragma once

#include <memory>
#include <string>

#include "arrowquant/checkpoint.h"
#include "arrowquant/model_file.h"
#include "arrowquant/pipeline.h"

namespace arrowquant {

// The metadata every file of the job carries: tool, recipe, source, modality.
ModelMetadata JobMetadata(const Checkpoint& ck, const PipelineConfig& config,
                          const std::string& modality);

// `scratch`: a part's file, read back only by the merge (ModelWriterOptions::scratch), always one
// file; otherwise a dataset when config.max_file_bytes > 0.
Result<std::unique_ptr<ModelDatasetWriter>> OpenJobWriter(const Checkpoint& ck,
                                                          const std::string& out_path,
                                                          const PipelineConfig& config,
                                                          const std::string& modality,
                                                          bool scratch);

}  // namespace arrowquant
