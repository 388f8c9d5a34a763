#include "pipeline/job_writer.h"

#include <nlohmann/json.hpp>

namespace arrowquant {

ModelMetadata JobMetadata(const Checkpoint& ck, const PipelineConfig& config,
                          const std::string& modality) {
  ModelMetadata meta;
  meta.tool_version = config.tool_version;
  meta.recipe_json = config.recipe_json;
  meta.modality = modality;
  meta.source_json = nlohmann::json{{"path", ck.path()},
                                    {"layout", std::string(CheckpointLayoutName(ck.layout()))}}
                         .dump();
  return meta;
}

Result<std::unique_ptr<ModelDatasetWriter>> OpenJobWriter(const Checkpoint& ck,
                                                          const std::string& out_path,
                                                          const PipelineConfig& config,
                                                          const std::string& modality,
                                                          bool scratch) {
  ModelDatasetOptions options;
  options.file.scratch = scratch;
  options.max_file_bytes = scratch ? 0 : config.max_file_bytes;
  return ModelDatasetWriter::Open(out_path, JobMetadata(ck, config, modality), options);
}

}  // namespace arrowquant
