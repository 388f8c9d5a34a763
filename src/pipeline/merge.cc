// A job run in parts (scale-out): the parts' scratch files copied, record by record and in
// tensor order, into the job's model file or dataset, or one file of its dataset at a time.
#include <algorithm>
#include <functional>
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

namespace {

// Writes the tensors [begin, end) of a part file through `write`, each record as the part
// wrote it (`scratch` reused from tensor to tensor).
Status CopyRecords(const std::string& part, size_t begin, size_t end, QuantizedTensor& scratch,
                   const std::function<Status(const TensorRecord&)>& write) {
  ModelReaderOptions options;
  options.verify_checksums = false;  // a scratch file has none (ModelWriterOptions::scratch)
  AQ_ASSIGN_OR_RETURN(auto reader, ModelReader::Open(part, options));
  const auto& tensors = reader->tensors();
  for (size_t i = begin; i < std::min(end, tensors.size()); ++i) {
    const ModelTensorInfo& info = tensors[i];
    TensorRecord rec;
    rec.name = info.name;
    rec.component = info.component;
    rec.metrics = info.metrics;
    rec.time_aware = info.time_aware;
    rec.spatial = info.spatial;
    rec.activation_stats = info.activation_stats;
    std::vector<std::byte> raw;
    if (info.spec) {
      AQ_RETURN_IF_ERROR(reader->ReadQuantizedInto(info.name, scratch));
      rec.quantized = &scratch;
    } else {
      AQ_ASSIGN_OR_RETURN(raw, reader->ReadRaw(info.name));
      rec.raw = raw;
      rec.raw_dtype = info.raw_dtype;
      rec.raw_shape = info.shape;
    }
    AQ_RETURN_IF_ERROR(write(rec));
  }
  return Status::OK();
}

}  // namespace

Status PartMerger::Append(const std::string& part) {
  Impl& m = *impl_;
  if (m.done) return Status(StatusCode::kInvalidArgument, part + ": the merge is closed");
  Status st = CopyRecords(part, 0, SIZE_MAX, m.q,
                          [&](const TensorRecord& r) { return m.writer->Write(r); });
  if (!st.ok()) {
    m.writer->Abort();
    m.done = true;
  }
  return st;
}

Status PartMerger::Close() {
  Impl& m = *impl_;
  if (m.done) return Status(StatusCode::kInvalidArgument, "the merge is already closed");
  m.done = true;
  return m.writer->Close();
}

Status WriteDatasetFile(const Checkpoint& ck, const std::vector<std::string>& parts, size_t first,
                        size_t count, const std::string& out_path, const PipelineConfig& config,
                        const std::string& modality, int index) {
  AQ_ASSIGN_OR_RETURN(
      auto writer,
      ModelWriter::Open(out_path, DatasetFileMetadata(JobMetadata(ck, config, modality), index)));
  QuantizedTensor scratch;
  size_t skip = first, left = count;
  auto write = [&](const TensorRecord& r) { return writer->Write(r); };
  for (const std::string& part : parts) {
    if (left == 0) break;
    ModelReaderOptions options;
    options.verify_checksums = false;
    AQ_ASSIGN_OR_RETURN(auto reader, ModelReader::Open(part, options));
    const size_t n = reader->tensors().size();
    reader.reset();
    if (skip >= n) {
      skip -= n;
      continue;
    }
    const size_t take = std::min(left, n - skip);
    AQ_RETURN_IF_ERROR(CopyRecords(part, skip, skip + take, scratch, write));
    left -= take;
    skip = 0;
  }
  if (left != 0) {
    return Status(StatusCode::kInvalidArgument,
                  out_path + ": the parts hold fewer tensors than the file's " +
                      std::to_string(first + count));
  }
  return writer->Close();  // an unclosed writer (an error above) removes its file
}

Status MergeParts(const Checkpoint& ck, const std::vector<std::string>& parts,
                  const std::string& out_path, const PipelineConfig& config,
                  const std::string& modality) {
  AQ_ASSIGN_OR_RETURN(auto merger, PartMerger::Open(ck, out_path, config, modality));
  for (const auto& part : parts) AQ_RETURN_IF_ERROR(merger->Append(part));
  return merger->Close();
}

}  // namespace arrowquant
