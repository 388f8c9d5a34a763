// The quantized model file: Extended Parquet V2 (docs/format.md, "Model file").
//
// One row per tensor (a tensor whose payload would pass `max_chunk_bytes` is split by rows over
// several consecutive rows), one row group per row, so a writer holds one tensor at a time and a
// reader fetches one tensor without touching the others. Parquet format 2.6, V2 data pages, page
// checksums written and verified. Arrow stays behind this header.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "arrowquant/activation_params.h"
#include "arrowquant/dtype.h"
#include "arrowquant/quantize.h"
#include "arrowquant/status.h"

namespace arrowquant {

inline constexpr const char* kModelFormatName = "arrowquant-parquet";
inline constexpr const char* kModelFormatVersion = "2.0";

// One tensor to write: either quantized, or kept unchanged (raw bytes of `raw_dtype`).
struct TensorRecord {
  std::string name;
  std::string component;
  const QuantizedTensor* quantized = nullptr;
  std::span<const std::byte> raw;
  DType raw_dtype = DType::kF32;
  std::vector<uint64_t> raw_shape;
  std::optional<ErrorMetrics> metrics;
  std::optional<TimeAwareParams> time_aware;
  std::optional<SpatialParams> spatial;
  std::optional<ActivationStats> activation_stats;
};

struct ModelMetadata {
  std::string tool_version;
  std::string recipe_json = "{}";
  std::string source_json = "{}";  // source model names, content hash
  std::string modality;            // image, video, audio, text, code, or ""
  bool is_diffusion_model = true;
  std::map<std::string, std::string> extra;  // more key/values, stored as given
};

// Neither the writer nor the reader uses or resizes Arrow's process-wide thread pools: a
// program that also uses pyarrow keeps its own settings (pyarrow.cpu_count()).
struct ModelWriterOptions {
  uint64_t max_chunk_bytes = 1ull << 30;  // keeps every value far below Parquet's 2 GiB
  // A scratch file that only MergeParts reads back (a part of a job run in parts): nothing
  // compressed and no page checksums, so neither side spends time on what is thrown away.
  bool scratch = false;
};

class ModelWriter {
 public:
  // Creates `<path>.tmp-<pid>`; Close() renames it to `path`. Destroying an unclosed writer
  // removes the temporary file, so `path` never holds a partial model.
  static Result<std::unique_ptr<ModelWriter>> Open(const std::string& path, ModelMetadata metadata,
                                                   const ModelWriterOptions& options = {});
  ~ModelWriter();
  Status Write(const TensorRecord& record);
  Status Close();
  void Abort();

 private:
  struct Impl;
  explicit ModelWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A model written as a Parquet dataset: a folder of model files named
// model-00001-of-0000N.parquet (kDatasetFilePattern), each holding a run of consecutive tensors
// (never part of one), under the job's metadata; their rows in file order are the single file's
// rows. pyarrow.dataset, DuckDB and Spark read the folder as one table; ModelReader opens it as
// one model. A file starts before the tensor whose payload would take the current file's past
// `max_file_bytes` (payload before compression: codes, scales, zero-points, or raw bytes), so the
// split depends on the tensors alone, never on how the job ran.
struct ModelDatasetOptions {
  uint64_t max_file_bytes = 0;  // 0: no dataset, one file at the path (ModelWriter)
  ModelWriterOptions file;
};

// The file name of file `index` (1-based) of `count`.
std::string DatasetFileName(int index, int count);

// The split rule: the index of each file's first tensor, for tensors of these payload bytes in
// order (QuantizedTensor::nbytes(), or a raw tensor's bytes: LayerReport::stored_bytes).
std::vector<size_t> DatasetFileStarts(std::span<const uint64_t> payload_bytes,
                                      uint64_t max_file_bytes);

// A dataset written file by file (ModelDatasetWriter, or scale-out's tasks, one a file): file
// `index` is written to `<folder>/DatasetPendingName(index)` under DatasetFileMetadata(job,
// index); FinishDataset gives the `count` files their names and moves the folder to `path` (a
// previous `path` is replaced).
std::string DatasetPendingName(int index);
ModelMetadata DatasetFileMetadata(ModelMetadata job, int index);
Status FinishDataset(const std::string& folder, const std::string& path, int count);

class ModelDatasetWriter {
 public:
  // Writes `<path>.tmp-<pid>/` and renames it to `path` on Close() (a previous `path` is
  // replaced); destroying an unclosed writer removes the folder. max_file_bytes 0: exactly a
  // ModelWriter at `path`.
  static Result<std::unique_ptr<ModelDatasetWriter>> Open(const std::string& path,
                                                          ModelMetadata metadata,
                                                          const ModelDatasetOptions& options);
  ~ModelDatasetWriter();
  Status Write(const TensorRecord& record);
  Status Close();
  void Abort();

 private:
  struct Impl;
  explicit ModelDatasetWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct ModelTensorInfo {
  std::string name;
  std::string component;
  std::vector<uint64_t> shape;
  std::string source_dtype;       // "F32", "F16", ...
  std::string quant_type;         // "int2", "int4", "int8", or "raw"
  std::optional<QuantSpec> spec;  // quantized tensors
  DType raw_dtype = DType::kF32;  // raw tensors
  uint64_t num_params = 0;
  std::optional<ErrorMetrics> metrics;
  std::optional<TimeAwareParams> time_aware;
  std::optional<SpatialParams> spatial;
  std::optional<ActivationStats> activation_stats;
  uint64_t stored_bytes = 0;  // payload bytes (codes + scales + zero-points + super-scales)
  // Where its rows are: (row group, row within the group), in chunk order, in file `file` of a
  // dataset (0 for a single file).
  std::vector<std::pair<int, int64_t>> rows;
  int file = 0;
};

struct ModelReaderOptions {
  bool verify_checksums = true;
  // Rows (tensor chunks) a file may claim: the footer's counts size the reader's buffers, so a
  // damaged or hostile footer must not ask for terabytes. Models have thousands of tensors.
  uint64_t max_rows = 1'000'000;
};

// How the writer groups rows: a row (tensor chunk) of at least this many payload bytes gets a
// row group of its own; smaller rows share one, up to kSharedRowGroupRows of them. A size
// budget estimates the file's row groups from these.
inline constexpr uint64_t kOwnRowGroupBytes = 256 << 10;
inline constexpr size_t kSharedRowGroupRows = 256;

// The bytes `q` takes in a model file's payload: its codes, and its scale, zero-point and
// super-scale buffers as the writer compresses them (zstd). What a size budget counts.
Result<uint64_t> StoredPayloadBytes(const QuantizedTensor& q);

// The model a path names: the path itself when it is a file or a dataset folder,
// `<folder>/model.aq.parquet` (a file, or a dataset folder of that name) when it is the folder
// that `arrowquant quantize` writes. NotFound when there is neither.
inline constexpr const char* kModelFileName = "model.aq.parquet";
Result<std::string> ResolveModelPath(const std::string& path);

// One tensor to load: `out` holds its num_params values of `dtype` (F32/F16/BF16; integer and
// bool tensors only in their stored dtype, copied as they are).
struct LoadRequest {
  std::string name;
  DType dtype = DType::kF16;
  std::span<std::byte> out;
};

class ModelReader {
 public:
  // A model file, a dataset folder, or the folder `arrowquant quantize` wrote.
  static Result<std::unique_ptr<ModelReader>> Open(const std::string& path,
                                                   const ModelReaderOptions& options = {});
  ~ModelReader();

  // The file, or the dataset's folder.
  const std::string& path() const;
  // The files read: the path itself, or the dataset's files in order.
  std::vector<std::string> files() const;
  // True for files in the seed project's base V2 schema (read-only compatibility).
  bool legacy() const;
  const std::map<std::string, std::string>& metadata() const;
  const std::vector<ModelTensorInfo>& tensors() const;
  const ModelTensorInfo* Find(const std::string& name) const;

  Result<QuantizedTensor> ReadQuantized(const std::string& name) const;
  // The same into `q`, reusing its buffers' capacity (a loop over many tensors then does not
  // pay for fresh, kernel-zeroed pages each time).
  Status ReadQuantizedInto(const std::string& name, QuantizedTensor& q) const;
  // The bytes of a raw (unquantized) tensor, in its stored dtype.
  Result<std::vector<std::byte>> ReadRaw(const std::string& name) const;
  // Any tensor to F32/F16/BF16; `out` holds num_params values of `dtype`. Equalized tensors
  // (stored as W / s, SpatialParams) come back as W: the scales are multiplied back in.
  Status Dequantize(const std::string& name, DType dtype, std::span<std::byte> out,
                    int threads = 1) const;
  // The values as stored: W / s for equalized tensors (for runtimes that multiply their
  // activations by s, arrowquant.torch.apply).
  Status DequantizeAsStored(const std::string& name, DType dtype, std::span<std::byte> out,
                            int threads = 1) const;
  // Many tensors into caller-owned buffers, `threads` tensors at a time (largest first); safe
  // to call from several threads. Every request is checked before any is read; the first
  // failure (in request order) is returned. as_stored: DequantizeAsStored instead of Dequantize.
  Status Load(std::span<const LoadRequest> requests, int threads, bool as_stored = false) const;

  struct Impl;  // opaque: defined by the Parquet reader (it holds Arrow types)

 private:
  explicit ModelReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace arrowquant
