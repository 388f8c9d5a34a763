// Where the model file of a path is: every entry point (Python open/load_state_dict, the torch
// runtime, inspect, validate, eval) resolves paths here, so all accept the CLI's output folder.
#include <filesystem>
#include <system_error>

#include "arrowquant/model_file.h"

namespace arrowquant {

Result<std::string> ResolveModelPath(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st))
    return Status(StatusCode::kNotFound, path + ": no such file or folder");
  if (!fs::is_directory(st)) return path;
  const fs::path inside = fs::path(path) / kModelFileName;
  if (fs::is_regular_file(inside, ec)) return inside.string();
  return Status(StatusCode::kNotFound, path + ": a folder without " + kModelFileName +
                                           " (pass the model file, or the folder that "
                                           "`arrowquant quantize` wrote)");
}

}  // namespace arrowquant
