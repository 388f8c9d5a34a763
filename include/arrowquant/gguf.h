// GGUF interop (docs/interop.md): ggml's block formats encoded with ArrowQuant's fitting (the
// error-minimizing grid and coded-scale neighbour search), decoded with GGUF's own arithmetic,
// and the GGUF container read (memory-mapped, strictly validated) and written (temporary name,
// then rename).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "arrowquant/gptq.h"
#include "arrowquant/quantize.h"
#include "arrowquant/status.h"
#include "arrowquant/tensor.h"

namespace arrowquant {

// ggml's type numbers (ggml.h). Every type of GGUF is known to the reader (sizes validated);
// those listed in GgufCodecs() are also encoded and decoded here.
enum class GgufType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ5_0 = 6,
  kQ8_0 = 8,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
};

struct GgufTypeInfo {
  uint32_t id;
  std::string_view name;  // "Q4_K"
  uint32_t block;         // values per block
  uint32_t bytes;         // bytes per block
};

// Every type ggml defines (nullptr: not a ggml type).
const GgufTypeInfo* FindGgufType(uint32_t id);
// The types this library encodes and decodes, by name ("Q4_K", case-insensitive).
Result<GgufType> ParseGgufType(std::string_view name);
std::string_view GgufTypeName(GgufType t);
// The types encoded here, widest first: Q8_0, Q6_K, Q5_K, Q5_0, Q4_K, Q4_0, Q3_K, Q2_K, then
// the float types F16, BF16, F32.
std::vector<GgufType> GgufCodecs();
// Bits per weight as stored (block bytes * 8 / block values).
double GgufBitsPerWeight(GgufType t);
// Whether a tensor whose innermost dimension (ne0, the last of its shape) is `ne0` can be stored
// as `t`: ggml's blocks run along ne0.
bool GgufFits(GgufType t, uint64_t ne0);

struct GgufEncodeOptions {
  Grid grid = Grid::kSearch;  // kMinMax: min/max scales, no search
  int threads = 1;
  // The layer's input second moments over a row (FactorGptq without activation order): codes
  // chosen by GPTQ to minimise the layer's output error instead of the weight error (the
  // calibrated encoding; an importance matrix is H's diagonal, GPTQ uses all of H).
  std::shared_ptr<const GptqFactor> gptq;
};

struct GgufEncoded {
  std::vector<uint8_t> bytes;
  ErrorMetrics metrics;  // of ggml's decoding of `bytes` against w
};

// w (F32/F16/BF16, rank >= 1, its last dimension a multiple of t's block) as t's blocks, in
// ggml's element order (row-major, as w), measured row by row as it is encoded. Float types are
// converted (round to nearest even).
Result<GgufEncoded> GgufEncode(const TensorView& w, GgufType t,
                               const GgufEncodeOptions& options = {});
// The GGUF type whose blocks hold exactly q's codes and stored scales, if there is one:
// int8-sym-g32-f16 -> Q8_0, int4-sym-g32-f16 -> Q4_0, int4-asym-g32-q6 (rows a multiple of
// 256, the row's super-scales repeated per super-block) -> Q4_K; otherwise an error naming the
// tensor and its format. `name` is for the error.
Result<GgufType> GgufTypeOf(const QuantizedView& q, std::string_view name);
// q's blocks in that type, without requantizing: the same codes, the same decoded values.
Result<std::vector<uint8_t>> GgufRepack(const QuantizedView& q, std::string_view name);

// n values of type t from its blocks, with the arithmetic of ggml's dequantizers (so exactly
// what the gguf Python package and ggml's reference code produce).
Status GgufDecode(GgufType t, std::span<const uint8_t> bytes, uint64_t n, float* out,
                  int threads = 1);

// --- The container --------------------------------------------------------------------------

struct GgufReaderLimits {
  uint64_t max_tensors = 1'000'000;
  uint64_t max_kv = 1'000'000;
  uint64_t max_string_bytes = 1ull << 30;
  uint64_t max_array_values = 1ull << 32;
};

struct GgufTensorInfo {
  std::string name;
  uint32_t type = 0;            // ggml type number (FindGgufType is non-null)
  std::vector<uint64_t> shape;  // PyTorch order: ggml's ne reversed (ne0 is the last)
  uint64_t offset = 0;          // absolute byte offset in the file
  uint64_t nbytes = 0;
  uint64_t num_elements() const;
};

struct GgufHeader {
  uint32_t version = 3;
  uint32_t alignment = 32;
  uint64_t data_offset = 0;  // absolute
  // Metadata in file order: key and its value as JSON text (strings, numbers, booleans and
  // arrays; the GGUF value type is kept in `kv_types`).
  std::vector<std::pair<std::string, std::string>> kv;
  std::vector<uint32_t> kv_types;
  std::vector<GgufTensorInfo> tensors;  // in header order
};

// Validates a whole GGUF image (version 2 or 3, little-endian). `label` starts every error.
// Pure function over bytes: what the fuzzer drives.
Result<GgufHeader> ParseGguf(std::span<const std::byte> file, std::string_view label,
                             const GgufReaderLimits& limits = {});

class MappedFile;

class GgufFile {
 public:
  static Result<std::shared_ptr<GgufFile>> Open(const std::string& path,
                                                const GgufReaderLimits& limits = {});
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  const GgufHeader& header() const { return header_; }
  const std::vector<GgufTensorInfo>& tensors() const { return header_.tensors; }
  const GgufTensorInfo* Find(std::string_view name) const;
  std::span<const uint8_t> Data(const GgufTensorInfo& info) const;
  // The tensor decoded to f32 (an error naming the tensor for types not decoded here).
  Status Decode(const GgufTensorInfo& info, float* out, int threads = 1) const;

 private:
  GgufFile(std::string path, std::unique_ptr<MappedFile> map, GgufHeader header);
  std::string path_;
  std::unique_ptr<MappedFile> map_;
  GgufHeader header_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

// One metadata value to write: its GGUF value type (4 = UINT32, 6 = FLOAT32, 7 = BOOL,
// 8 = STRING, 10 = UINT64, 5 = INT32, 9 = ARRAY of strings) and the value as JSON text.
struct GgufKV {
  std::string key;
  uint32_t type = 8;
  std::string json;
};

struct GgufTensorSpec {
  std::string name;
  std::vector<uint64_t> shape;  // PyTorch order
  GgufType type = GgufType::kF16;
};

// Writes `path` through a temporary name beside it: Begin() writes the header for every tensor
// (sizes follow from shape and type), WriteTensor() their bytes in that order, Finish() syncs and
// renames. Destroyed before Finish(), it removes the temporary file.
class GgufWriter {
 public:
  static Result<std::unique_ptr<GgufWriter>> Make(const std::string& path, uint32_t alignment = 32);
  ~GgufWriter();
  GgufWriter(const GgufWriter&) = delete;
  GgufWriter& operator=(const GgufWriter&) = delete;

  Status Begin(const std::vector<GgufKV>& kv, const std::vector<GgufTensorSpec>& tensors);
  Status WriteTensor(size_t index, std::span<const uint8_t> bytes);
  Status Finish();
  // Bytes of tensor `index` as Begin() laid it out.
  uint64_t TensorBytes(size_t index) const;

 private:
  struct Impl;
  explicit GgufWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// --- A whole checkpoint to one GGUF file ---------------------------------------------------

class Checkpoint;

struct GgufExportTensor {
  std::string source;  // the checkpoint's tensor name
  std::string name;    // its name in the GGUF file
  GgufType type = GgufType::kF16;
  std::vector<uint64_t> shape;  // stored shape (the same elements); empty: the source's
  // Calibration (optional, block types only): the layer's input second moments over a stored
  // row; `fit` chooses the codes by GPTQ (damped by `damp`), `check` (held-out rows) measures
  // the relative output error the result reports.
  std::shared_ptr<const SecondMoments> fit, check;
  double damp = 0.01;
};

struct GgufExportResult {
  std::string source, name;
  GgufType type = GgufType::kF16;
  std::vector<uint64_t> shape;
  std::string source_dtype;
  uint64_t source_bytes = 0, stored_bytes = 0;
  ErrorMetrics metrics;                // ggml's decoding against the source
  bool gptq = false;                   // codes chosen by GPTQ on `fit`
  std::optional<double> output_error;  // relative output error on `check`
};

// An ArrowQuant model file's tensors to GGUF without requantizing (GgufRepack; kept tensors as
// stored, F32/F16/BF16 only), names as stored; an error naming the first tensor that does not
// map, before anything is written.
Result<std::vector<GgufExportResult>> ExportModelGguf(const std::string& model_path,
                                                      const std::string& out_path,
                                                      const std::vector<GgufKV>& kv);

// Progress: source bytes done, of total, and the tensor; false cancels (kCancelled, no file).
using GgufProgressFn =
    std::function<bool(uint64_t done, uint64_t total, const std::string& tensor)>;

// Encodes `tensors` (in this order) from `ck` into `out_path` (temporary name, then rename), the
// tensors in parallel with `options.threads` workers and a bounded number of bytes in flight.
Result<std::vector<GgufExportResult>> ExportGguf(const Checkpoint& ck, const std::string& out_path,
                                                 const std::vector<GgufExportTensor>& tensors,
                                                 const std::vector<GgufKV>& kv,
                                                 const GgufEncodeOptions& options,
                                                 const GgufProgressFn& progress = {});

}  // namespace arrowquant
