// The file names of a model dataset (model_file.h, ModelDatasetOptions): which files of a folder
// belong to it, in order. Shared by the dataset's writer and reader.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "arrowquant/status.h"

namespace arrowquant::pq {

// (index, count) of a name made by DatasetFileName; nullopt for any other name.
std::optional<std::pair<int, int>> ParseDatasetFileName(const std::string& name);

// Whether `folder` holds a file named as a dataset's.
bool HasDatasetFiles(const std::string& folder);

// The dataset's files in index order: every name of `count` files, 1..count, each once. Hidden
// files ('.', '_': temporaries, as Arrow's dataset discovery skips them) and non-Parquet files
// are left out; another .parquet file, a gap, or files of different counts are errors.
Result<std::vector<std::string>> ListDatasetFiles(const std::string& folder);

}  // namespace arrowquant::pq
