#include "pipeline/job_writer.h"

#include <nlohmann/json.hpp>

namespace arrowquant {

Result<std::unique_ptr<ModelWriter>> OpenJobWriter(const Checkpoint& ck,
                                                   const std::string& out_path,
                                                   const PipelineConfig& config,
                                                   const std::string& modality, bool scratch) {
  ModelMetadata meta;
  meta.tool_version = config.tool_version;
  meta.recipe_json = config.recipe_json;
  meta.modality = modality;
  meta.source_json = nlohmann::json{{"path", ck.path()},
                                    {"layout", std::string(CheckpointLayoutName(ck.layout()))}}
                         .dump();
  ModelWriterOptions options;
  options.scratch = scratch;
  return ModelWriter::Open(out_path, meta, options);
}

}  // namespace arrowquant
