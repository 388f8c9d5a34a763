// A job run in parts (scale-out): the parts' scratch files copied, record by record and in
// tensor order, into the job's model file.
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "arrowquant/pipeline.h"
#include "pipeline/job_writer.h"

namespace arrowquant {

struct PartMerger::Impl {
  std::unique_ptr<ModelDatasetWriter> writer;
  bool done = false;
  QuantizedTensor q;  // reused from tensor to tensor
};

PartMerger::PartMerger(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PartMerger::~PartMerger() {
  if (impl_ && !impl_->done) impl_->writer->Abort();
}

Result<std::unique_ptr<PartMerger>> PartMerger::Open(const Checkpoint& ck,
                                                     const std::string& out_path,
                                                     const PipelineConfig& config,
                                                     const std::string& modality) {
  auto impl = std::make_unique<Impl>();
  AQ_ASSIGN_OR_RETURN(impl->writer, OpenJobWriter(ck, out_path, config, modality, false));
  return std::unique_ptr<PartMerger>(new PartMerger(std::move(impl)));
}

Status PartMerger::Append(const std::string& part) {
  Impl& m = *impl_;
  if (m.done) return Status(StatusCode::kInvalidArgument, part + ": the merge is closed");
  ModelReaderOptions options;
  options.verify_checksums = false;  // a scratch file has none (ModelWriterOptions::scratch)
  auto copy = [&]() -> Status {
    AQ_ASSIGN_OR_RETURN(auto reader, ModelReader::Open(part, options));
    for (const ModelTensorInfo& info : reader->tensors()) {
      TensorRecord rec;
      rec.name = info.name;
      rec.component = info.component;
      rec.metrics = info.metrics;
      rec.time_aware = info.time_aware;
      rec.spatial = info.spatial;
      rec.activation_stats = info.activation_stats;
      std::vector<std::byte> raw;
      if (info.spec) {
        AQ_RETURN_IF_ERROR(reader->ReadQuantizedInto(info.name, m.q));
        rec.quantized = &m.q;
      } else {
        AQ_ASSIGN_OR_RETURN(raw, reader->ReadRaw(info.name));
        rec.raw = raw;
        rec.raw_dtype = info.raw_dtype;
        rec.raw_shape = info.shape;
      }
      AQ_RETURN_IF_ERROR(m.writer->Write(rec));
    }
    return Status::OK();
  };
  if (Status st = copy(); !st.ok()) {
    m.writer->Abort();
    m.done = true;
    return st;
  }
  return Status::OK();
}

Status PartMerger::Close() {
  Impl& m = *impl_;
  if (m.done) return Status(StatusCode::kInvalidArgument, "the merge is already closed");
  m.done = true;
  return m.writer->Close();
}

Status MergeParts(const Checkpoint& ck, const std::vector<std::string>& parts,
                  const std::string& out_path, const PipelineConfig& config,
                  const std::string& modality) {
  AQ_ASSIGN_OR_RETURN(auto merger, PartMerger::Open(ck, out_path, config, modality));
  for (const auto& part : parts) AQ_RETURN_IF_ERROR(merger->Append(part));
  return merger->Close();
}

}  // namespace arrowquant
