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

#include "arrowquant/dtype.h"
#include "arrowquant/quantize.h"
#include "arrowquant/status.h"

namespace arrowquant {

inline constexpr const char* kModelFormatName = "arrowquant-parquet";
inline constexpr const char* kModelFormatVersion = "2.0";

// Activation quantization per timestep group (filled by calibration).
struct TimeAwareParams {
  int32_t num_groups = 0;
  std::vector<int32_t> group_bounds;  // num_groups + 1 timestep boundaries, ascending
  int32_t act_bits = 8;
  std::vector<float> act_scales;         // one per group
  std::vector<int32_t> act_zero_points;  // one per group
};

// DiTAS channel equalization: weights were stored as W / s, activations must be multiplied by s.
struct SpatialParams {
  std::vector<float> equalization_scales;  // one per input channel
  float smoothing_alpha = 0.0f;
};

struct ActivationStats {
  std::vector<float> min, max, absmax;  // per input channel
};

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

struct ModelWriterOptions {
  uint64_t max_chunk_bytes = 1ull << 30;  // keeps every value far below Parquet's 2 GiB
  int arrow_threads = 1;
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

struct ModelTensorInfo {
  std::string name;
  std::string component;
  std::vector<uint64_t> shape;
  std::string source_dtype;  // "F32", "F16", ...
  std::string quant_type;    // "int2", "int4", "int8", or "raw"
  std::optional<QuantSpec> spec;  // quantized tensors
  DType raw_dtype = DType::kF32;  // raw tensors
  uint64_t num_params = 0;
  std::optional<ErrorMetrics> metrics;
  std::optional<TimeAwareParams> time_aware;
  std::optional<SpatialParams> spatial;
  std::optional<ActivationStats> activation_stats;
  uint64_t stored_bytes = 0;  // payload bytes (codes + scales + zero-points + super-scales)
  // Where its rows are: (row group, row within the group), in chunk order.
  std::vector<std::pair<int, int64_t>> rows;
};

struct ModelReaderOptions {
  bool verify_checksums = true;
  int arrow_threads = 1;
};

class ModelReader {
 public:
  static Result<std::unique_ptr<ModelReader>> Open(const std::string& path,
                                                   const ModelReaderOptions& options = {});
  ~ModelReader();

  const std::string& path() const;
  // True for files in the seed project's base V2 schema (read-only compatibility).
  bool legacy() const;
  const std::map<std::string, std::string>& metadata() const;
  const std::vector<ModelTensorInfo>& tensors() const;
  const ModelTensorInfo* Find(const std::string& name) const;

  Result<QuantizedTensor> ReadQuantized(const std::string& name) const;
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

 private:
  struct Impl;
  explicit ModelReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace arrowquant
