// Where the model of a path is: every entry point (Python open/load_state_dict, the torch
// runtime, inspect, validate, eval) resolves paths here, so all accept the CLI's output folder.
#include <filesystem>
#include <system_error>

#include "arrowquant/model_file.h"
#include "formats/parquet/dataset_layout.h"

namespace arrowquant {

Result<std::string> ResolveModelPath(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st))
    return Status(StatusCode::kNotFound, path + ": no such file or folder");
  if (!fs::is_directory(st)) return path;
  const fs::path inside = fs::path(path) / kModelFileName;
  if (fs::exists(inside, ec)) return inside.string();  // a file, or a dataset's folder
  if (pq::HasDatasetFiles(path)) return path;
  return Status(StatusCode::kNotFound, path + ": a folder without " + kModelFileName +
                                           " or dataset files (pass the model file, the dataset "
                                           "folder, or the folder that `arrowquant quantize` "
                                           "wrote)");
}

}  // namespace arrowquant
