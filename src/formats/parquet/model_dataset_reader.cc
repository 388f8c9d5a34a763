// Opening a model dataset (model_file.h, ModelDatasetOptions): each file opened as a model file,
// checked to be one job's, and their tensors listed as one model's, in file order.
#include <nlohmann/json.hpp>

#include "arrowquant/model_file.h"
#include "formats/parquet/dataset_layout.h"
#include "formats/parquet/model_schema.h"
#include "formats/parquet/reader_impl.h"

namespace arrowquant {

namespace {

// Keys every file of the dataset carries with the same value: the job's.
constexpr const char* kJobKeys[] = {pq::key::kFormat,   pq::key::kVersion, pq::key::kTool,
                                    pq::key::kRecipe,   pq::key::kSource,  pq::key::kModality,
                                    pq::key::kDiffusion};

std::string Value(const std::map<std::string, std::string>& m, const char* key) {
  const auto it = m.find(key);
  return it == m.end() ? std::string() : it->second;
}

// The files' totals (tensors, parameters, bytes) summed: the single file's.
Status AddTotals(const ModelReader::Impl& file, nlohmann::json& sum) {
  const std::string s = Value(file.metadata, pq::key::kTotals);
  const auto j = nlohmann::json::parse(s, nullptr, false);
  if (!j.is_object()) return file.Err(StatusCode::kCorrupt, "unreadable totals");
  for (const auto& [k, v] : j.items()) {
    if (!v.is_number_unsigned()) return file.Err(StatusCode::kCorrupt, "totals: '" + k + "'");
    sum[k] = sum.value(k, uint64_t{0}) + v.get<uint64_t>();
  }
  return Status::OK();
}

}  // namespace

Result<std::unique_ptr<ModelReader::Impl>> OpenModelDataset(const std::string& folder,
                                                            const ModelReaderOptions& options) {
  AQ_ASSIGN_OR_RETURN(std::vector<std::string> names, pq::ListDatasetFiles(folder));
  auto impl = std::make_unique<ModelReader::Impl>();
  impl->path = folder;
  nlohmann::json totals = nlohmann::json::object();
  uint64_t rows = 0;
  for (size_t f = 0; f < names.size(); ++f) {
    AQ_ASSIGN_OR_RETURN(auto file, OpenModelFile(names[f], options));
    if (file->legacy) {
      return file->Err(StatusCode::kFormatInvalid, "a dataset's files are ArrowQuant model files");
    }
    const std::string index = Value(file->metadata, pq::key::kDatasetFile);
    if (index != std::to_string(f + 1)) {
      return file->Err(StatusCode::kFormatInvalid, "its footer says it is dataset file '" + index +
                                                       "', its name " + std::to_string(f + 1));
    }
    if (f == 0) impl->metadata = file->metadata;
    for (const char* k : kJobKeys) {
      if (Value(file->metadata, k) != Value(impl->metadata, k)) {
        return file->Err(StatusCode::kFormatInvalid, std::string("not the same job's as ") +
                                                         names[0] + " ('" + k + "' differs)");
      }
    }
    AQ_RETURN_IF_ERROR(AddTotals(*file, totals));
    for (const ModelTensorInfo& t : file->tensors) {
      rows += t.rows.size();
      if (rows > options.max_rows) {
        return impl->Err(StatusCode::kLimitExceeded,
                         "the files claim more than " + std::to_string(options.max_rows) +
                             " rows (tensor chunks), the reader's limit (max_rows)");
      }
      if (!impl->by_name.emplace(t.name, impl->tensors.size()).second) {
        return file->Err(StatusCode::kDuplicateName,
                         "tensor '" + t.name + "' is in another file of the dataset too");
      }
      impl->tensors.push_back(t);
      impl->tensors.back().file = static_cast<int>(f);
    }
    impl->files.push_back(std::move(file));
  }
  impl->metadata.erase(pq::key::kDatasetFile);
  impl->metadata[pq::key::kTotals] = totals.dump();
  return impl;
}

}  // namespace arrowquant
