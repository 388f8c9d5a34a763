// A checkpoint's tensors to one GGUF file: encoded in parallel (each tensor on one worker, a
// window of tensors and source bytes in flight, as the Parquet job), written in the given order.
#include <memory>
#include <string>

#include "arrowquant/checkpoint.h"
#include "arrowquant/gguf.h"
#include "core/parallel.h"

namespace arrowquant {
namespace {

constexpr size_t kWindowTensors = 64;
constexpr uint64_t kWindowBytes = uint64_t{256} << 20;

struct Slot {
  Status status;
  GgufEncoded encoded;
};

}  // namespace

Result<std::vector<GgufExportResult>> ExportGguf(const Checkpoint& ck, const std::string& out_path,
                                                 const std::vector<GgufExportTensor>& tensors,
                                                 const std::vector<GgufKV>& kv,
                                                 const GgufEncodeOptions& options,
                                                 const GgufProgressFn& progress) {
  std::vector<const CheckpointTensor*> src(tensors.size());
  std::vector<GgufTensorSpec> specs(tensors.size());
  uint64_t total = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    src[i] = ck.Find(tensors[i].source);
    if (src[i] == nullptr) {
      return Status(StatusCode::kNotFound,
                    ck.path() + ": no tensor '" + tensors[i].source + "' to export");
    }
    const TensorInfo& info = *src[i]->info;
    const uint64_t ne0 = info.shape.empty() ? 1 : info.shape.back();
    if (!GgufFits(tensors[i].type, ne0) || info.shape.size() > 4) {
      return Status(StatusCode::kInvalidArgument,
                    "tensor '" + tensors[i].source + "' (shape's last dimension " +
                        std::to_string(ne0) + ") cannot be stored as " +
                        std::string(GgufTypeName(tensors[i].type)));
    }
    specs[i] = GgufTensorSpec{tensors[i].name, info.shape, tensors[i].type};
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
    TensorView view{t.name, t.info->dtype, t.info->shape, t.data()};
    auto r = GgufEncode(view, tensors[i].type, one);
    if (r.ok()) {
      slot->encoded = std::move(*r);
    } else {
      slot->status = r.status();
    }
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
