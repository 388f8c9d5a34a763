// ModelReader's state, shared by the files that open a model (model_reader_open.cc) and read
// tensors from it (model_reader.cc). Private to formats/parquet.
#pragma once

#include <arrow/api.h>
#include <arrow/io/file.h>
#include <parquet/arrow/reader.h>
#include <parquet/properties.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "arrowquant/model_file.h"

namespace arrowquant {

struct ModelReader::Impl {
  std::string path;
  // A dataset: each file's own state (its rows, columns, readers); `tensors` are theirs in file
  // order, each naming its file. Empty for a single file.
  std::vector<std::unique_ptr<Impl>> files;
  bool legacy = false;
  // Tensors are read from several threads; Parquet readers are not shared between threads, so
  // each read borrows one from this pool (all over the same memory map and parsed footer).
  std::shared_ptr<arrow::io::RandomAccessFile> file;
  parquet::ReaderProperties props = parquet::default_reader_properties();
  std::shared_ptr<parquet::FileMetaData> footer;
  mutable std::mutex pool_mu;
  mutable std::vector<std::unique_ptr<parquet::arrow::FileReader>> idle;
  std::map<std::string, std::string> metadata;
  std::vector<ModelTensorInfo> tensors;
  std::map<std::string, size_t> by_name;
  std::map<std::string, int> columns;  // name -> column index
  // Seed rows: per-group scales and zero-points (float lists) and group size.
  struct SeedParams {
    std::vector<float> scales, zeros;
    int64_t group_size = 0;
  };
  std::map<std::string, SeedParams> seed_params;

  // The state that holds a tensor's rows: its file's.
  const Impl& Holder(const ModelTensorInfo& t) const {
    return files.empty() ? *this : *files[t.file];
  }
  Status Err(StatusCode code, const std::string& msg) const {
    return Status(code, path + ": " + msg);
  }
  Result<std::unique_ptr<parquet::arrow::FileReader>> Borrow() const;
  void Return(std::unique_ptr<parquet::arrow::FileReader> r) const;
  // Appends the tensor's bytes of `column` (all its rows) to `out`.
  Status ReadPayload(const ModelTensorInfo& t, const char* column, std::vector<uint8_t>& out) const;
  // Fills q (reusing its buffers' capacity) with a packed tensor.
  Status ReadQuantizedInto(const ModelTensorInfo& t, QuantizedTensor& q) const;
  // A raw tensor's stored bytes, checked against its shape and dtype (Corrupt otherwise).
  Status ReadRawBytes(const ModelTensorInfo& t, std::vector<uint8_t>& out) const;
  // Seed rows and raw rows to f32.
  Status DecodeSeedRow(const ModelTensorInfo& t, std::vector<float>& out) const;
  Status DecodeRawFloat(const ModelTensorInfo& t, std::vector<float>& out) const;
};

// One model file, opened (the light columns parsed; no payload read).
Result<std::unique_ptr<ModelReader::Impl>> OpenModelFile(const std::string& file,
                                                         const ModelReaderOptions& options);
// The dataset in `folder`, its files opened and checked as one model.
Result<std::unique_ptr<ModelReader::Impl>> OpenModelDataset(const std::string& folder,
                                                            const ModelReaderOptions& options);

}  // namespace arrowquant
