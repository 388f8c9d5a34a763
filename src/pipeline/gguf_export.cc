// A checkpoint's tensors to one GGUF file: encoded in parallel (each tensor on one worker, a
// window of tensors and source bytes in flight, as the Parquet job), written in the given order.
#include <cstring>
#include <memory>
#include <optional>
#include <string>

#include "arrowquant/checkpoint.h"
#include "arrowquant/gguf.h"
#include "arrowquant/model_file.h"
#include "core/parallel.h"

namespace arrowquant {
namespace {

constexpr size_t kWindowTensors = 64;
constexpr uint64_t kWindowBytes = uint64_t{256} << 20;

struct Slot {
  Status status;
  GgufEncoded encoded;
  std::optional<double> output_error;
};

bool IsBlockType(GgufType t) {
  return t != GgufType::kF32 && t != GgufType::kF16 && t != GgufType::kBF16;
}

// One tensor encoded, by GPTQ where it has calibration, and its output error measured on the
// held-out rows.
Status Encode(const TensorView& view, const GgufExportTensor& t, const GgufEncodeOptions& options,
              Slot& slot) {
  GgufEncodeOptions o = options;
  const bool calibrated = t.fit != nullptr && IsBlockType(t.type);
  if (calibrated) {
    GptqOptions g;
    g.damp = t.damp;
    AQ_ASSIGN_OR_RETURN(o.gptq, FactorGptq(*t.fit, g));
  }
  AQ_ASSIGN_OR_RETURN(slot.encoded, GgufEncode(view, t.type, o));
  if (calibrated && t.check != nullptr && t.check->count() > 0) {
    std::vector<float> deq(view.num_elements());
    AQ_RETURN_IF_ERROR(GgufDecode(t.type, slot.encoded.bytes, deq.size(), deq.data()));
    // GGUF's rows run along the last dimension, as H's columns.
    const uint64_t ne0 = view.shape.back();
    const TensorView rows{view.name, view.dtype, {deq.size() / ne0, ne0}, view.data};
    AQ_ASSIGN_OR_RETURN(slot.output_error, RelativeOutputError(deq, rows, *t.check));
  }
  return Status::OK();
}

}  // namespace

Result<std::vector<GgufExportResult>> ExportGguf(const Checkpoint& ck, const std::string& out_path,
                                                 const std::vector<GgufExportTensor>& tensors,
                                                 const std::vector<GgufKV>& kv,
                                                 const GgufEncodeOptions& options,
                                                 const GgufProgressFn& progress) {
  std::vector<const CheckpointTensor*> src(tensors.size());
  std::vector<GgufTensorSpec> specs(tensors.size());
  std::vector<std::vector<uint64_t>> shapes(tensors.size());
  uint64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    src[i] = ck.Find(tensors[i].source);
    if (src[i] == nullptr) {
      return Status(StatusCode::kNotFound,
                    ck.path() + ": no tensor '" + tensors[i].source + "' to export");
    }
    const TensorInfo& info = *src[i]->info;
    shapes[i] = tensors[i].shape.empty() ? info.shape : tensors[i].shape;
    uint64_t count = 1;
    for (uint64_t d : shapes[i]) count *= d;
    if (count != info.num_elements()) {
      return Status(StatusCode::kInvalidArgument,
                    "tensor '" + tensors[i].source + "': the stored shape has " +
                        std::to_string(count) + " elements, the tensor " +
                        std::to_string(info.num_elements()));
    }
    const uint64_t ne0 = shapes[i].empty() ? 1 : shapes[i].back();
    if (!GgufFits(tensors[i].type, ne0) || shapes[i].size() > 4) {
      return Status(StatusCode::kInvalidArgument,
                    "tensor '" + tensors[i].source + "' (shape's last dimension " +
                        std::to_string(ne0) + ") cannot be stored as " +
                        std::string(GgufTypeName(tensors[i].type)));
    }
    specs[i] = GgufTensorSpec{tensors[i].name, shapes[i], tensors[i].type};
    total += info.nbytes();
  }
  AQ_ASSIGN_OR_RETURN(std::unique_ptr<GgufWriter> writer, GgufWriter::Make(out_path));
  AQ_RETURN_IF_ERROR(writer->Begin(kv, specs));

  GgufEncodeOptions one = options;
  one.threads = 1;  // tensors run side by side
  std::vector<std::unique_ptr<Slot>> slots(tensors.size());
  std::vector<GgufExportResult> results;
  uint64_t done = 0;
  auto work = [&](size_t i) {
    auto slot = std::make_unique<Slot>();
    const CheckpointTensor& t = *src[i];
    TensorView view{t.name, t.info->dtype, shapes[i], t.data()};
    slot->status = Encode(view, tensors[i], one, *slot);
    slots[i] = std::move(slot);
  };
  auto write = [&](size_t i) -> Status {
    const std::unique_ptr<Slot> slot = std::move(slots[i]);
    AQ_RETURN_IF_ERROR(slot->status);
    AQ_RETURN_IF_ERROR(writer->WriteTensor(i, slot->encoded.bytes));
    const CheckpointTensor& t = *src[i];
    t.file->Evict(*t.info);
    GgufExportResult res;
    res.source = tensors[i].source;
    res.name = tensors[i].name;
    res.type = tensors[i].type;
    res.shape = t.info->shape;
    res.source_dtype = std::string(Traits(t.info->dtype).safetensors_name);
    res.source_bytes = t.info->nbytes();
    res.stored_bytes = slot->encoded.bytes.size();
    res.metrics = slot->encoded.metrics;
    res.gptq = tensors[i].fit != nullptr && IsBlockType(tensors[i].type);
    res.output_error = slot->output_error;
    results.push_back(std::move(res));
    done += t.info->nbytes();
    if (progress && !progress(done, total, t.name)) {
      return Status(StatusCode::kCancelled, out_path + ": cancelled");
    }
    return Status::OK();
  };
  auto bytes = [&](size_t i) -> uint64_t { return src[i]->info->nbytes(); };
  AQ_RETURN_IF_ERROR(ParallelOrdered(tensors.size(), std::max(1, options.threads), kWindowTensors,
                                     work, write, bytes, kWindowBytes));
  AQ_RETURN_IF_ERROR(writer->Finish());
  return results;
}

}  // namespace arrowquant

namespace arrowquant {

Result<std::vector<GgufExportResult>> ExportModelGguf(const std::string& model_path,
                                                      const std::string& out_path,
                                                      const std::vector<GgufKV>& kv) {
  AQ_ASSIGN_OR_RETURN(std::unique_ptr<ModelReader> reader, ModelReader::Open(model_path));
  const auto& infos = reader->tensors();
  std::vector<GgufTensorSpec> specs;
  // Every tensor's type first (the header needs them): a tensor that does not map is an error
  // before anything is written.
  for (const ModelTensorInfo& t : infos) {
    GgufType type = GgufType::kF16;
    const uint64_t ne0 = t.shape.empty() ? 1 : t.shape.back();
    if (t.spec && t.shape.size() > 2 && ne0 * t.shape[0] != t.num_params) {
      return Status(StatusCode::kUnsupported,
                    model_path + ": tensor '" + t.name + "' (" + std::to_string(t.shape.size()) +
                        " dimensions, the last " + std::to_string(ne0) +
                        "): GGUF's blocks run along the last dimension, so its quantized rows "
                        "have no GGUF layout; quantize from the checkpoint with --format gguf "
                        "(such tensors stay F16 there)");
    }
    if (t.spec) {
      QuantizedView shape_only;
      shape_only.spec = *t.spec;
      shape_only.rows = t.shape.empty() ? 1 : t.shape[0];
      shape_only.cols = shape_only.rows ? t.num_params / shape_only.rows : 0;
      AQ_ASSIGN_OR_RETURN(type, GgufTypeOf(shape_only, t.name));
    } else if (t.raw_dtype == DType::kF32 || t.raw_dtype == DType::kF16 ||
               t.raw_dtype == DType::kBF16) {
      type = t.raw_dtype == DType::kF32   ? GgufType::kF32
             : t.raw_dtype == DType::kF16 ? GgufType::kF16
                                          : GgufType::kBF16;
    } else {
      return Status(StatusCode::kUnsupported,
                    model_path + ": tensor '" + t.name + "' is " +
                        std::string(Traits(t.raw_dtype).safetensors_name) +
                        "; GGUF export stores float tensors only");
    }
    specs.push_back({t.name, t.shape, type});
  }
  AQ_ASSIGN_OR_RETURN(std::unique_ptr<GgufWriter> writer, GgufWriter::Make(out_path));
  AQ_RETURN_IF_ERROR(writer->Begin(kv, specs));
  std::vector<GgufExportResult> results;
  for (size_t i = 0; i < infos.size(); ++i) {
    const ModelTensorInfo& t = infos[i];
    std::vector<uint8_t> bytes;
    if (t.spec) {
      AQ_ASSIGN_OR_RETURN(QuantizedTensor q, reader->ReadQuantized(t.name));
      QuantizedView v{q.spec, q.rows, q.cols, q.codes, q.scales, q.zeros, q.super_scales};
      AQ_ASSIGN_OR_RETURN(bytes, GgufRepack(v, t.name));
    } else {
      AQ_ASSIGN_OR_RETURN(std::vector<std::byte> raw, reader->ReadRaw(t.name));
      bytes.resize(raw.size());
      std::memcpy(bytes.data(), raw.data(), raw.size());
    }
    AQ_RETURN_IF_ERROR(writer->WriteTensor(i, bytes));
    GgufExportResult res;
    res.source = res.name = t.name;
    res.type = specs[i].type;
    res.shape = t.shape;
    res.source_dtype = t.source_dtype;
    res.stored_bytes = bytes.size();
    if (t.metrics) res.metrics = *t.metrics;
    results.push_back(std::move(res));
  }
  AQ_RETURN_IF_ERROR(writer->Finish());
  return results;
}

}  // namespace arrowquant
