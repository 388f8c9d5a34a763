#include "formats/parquet/dataset_layout.h"

#include <cstdio>
#include <filesystem>
#include <regex>
#include <system_error>

#include "arrowquant/model_file.h"

namespace arrowquant {

std::string DatasetFileName(int index, int count) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "model-%05d-of-%05d.parquet", index, count);
  return buf;
}

namespace pq {

std::optional<std::pair<int, int>> ParseDatasetFileName(const std::string& name) {
  static const std::regex re(R"(model-(\d{5})-of-(\d{5})\.parquet)");
  std::smatch m;
  if (!std::regex_match(name, m, re)) return std::nullopt;
  return std::make_pair(std::stoi(m[1].str()), std::stoi(m[2].str()));
}

bool HasDatasetFiles(const std::string& folder) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(folder, ec)) {
    if (ParseDatasetFileName(e.path().filename().string())) return true;
  }
  return false;
}

Result<std::vector<std::string>> ListDatasetFiles(const std::string& folder) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::directory_iterator it(folder, ec);
  if (ec) return Status(StatusCode::kIoError, folder + ": cannot list the folder: " + ec.message());
  std::vector<std::string> files;
  int count = 0;
  for (const auto& e : it) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name[0] == '.' || name[0] == '_' || e.path().extension() != ".parquet") {
      continue;
    }
    const auto parsed = ParseDatasetFileName(name);
    if (!parsed) {
      return Status(
          StatusCode::kFormatInvalid,
          folder + ": '" + name +
              "' is not a file of the dataset (its files are model-NNNNN-of-NNNNN.parquet)");
    }
    const auto [index, n] = *parsed;
    if (count != 0 && n != count) {
      return Status(StatusCode::kFormatInvalid, folder + ": '" + name + "' is one of " +
                                                    std::to_string(n) + " files, another one of " +
                                                    std::to_string(count));
    }
    count = n;
    if (index < 1 || index > n) {
      return Status(StatusCode::kFormatInvalid, folder + ": '" + name + "': index out of range");
    }
    if (files.empty()) files.resize(static_cast<size_t>(n));
    files[static_cast<size_t>(index - 1)] = e.path().string();
  }
  if (files.empty()) {
    return Status(StatusCode::kNotFound,
                  folder + ": no dataset files (model-NNNNN-of-NNNNN.parquet)");
  }
  for (size_t i = 0; i < files.size(); ++i) {
    if (files[i].empty()) {
      return Status(StatusCode::kNotFound,
                    folder + ": " + DatasetFileName(static_cast<int>(i) + 1, count) +
                        " is missing (the dataset has " + std::to_string(count) + " files)");
    }
  }
  return files;
}

}  // namespace pq
}  // namespace arrowquant
