// A model as a Parquet dataset (model_file.h, ModelDatasetOptions): ModelWriters one after the
// other in a temporary folder, renamed to their final names (which carry the count) and moved
// into place at the end; the split rule and the finishing steps, shared with scale-out's file
// tasks.
#include <unistd.h>

#include <filesystem>
#include <set>
#include <system_error>

#include "arrowquant/model_file.h"
#include "formats/parquet/model_schema.h"

namespace arrowquant {

namespace fs = std::filesystem;

namespace {

// What a record adds to its file's payload before compression: the split rule's measure.
uint64_t PayloadBytes(const TensorRecord& r) {
  return r.quantized ? r.quantized->nbytes() : r.raw.size();
}

// Whether a tensor of `next` bytes starts a new file after `in_file` bytes.
bool StartsFile(uint64_t in_file, uint64_t next, uint64_t max_file_bytes) {
  return in_file > 0 && in_file + next > max_file_bytes;
}

}  // namespace

std::vector<size_t> DatasetFileStarts(std::span<const uint64_t> payload_bytes,
                                      uint64_t max_file_bytes) {
  std::vector<size_t> starts{0};
  uint64_t in_file = 0;
  for (size_t i = 0; i < payload_bytes.size(); ++i) {
    if (StartsFile(in_file, payload_bytes[i], max_file_bytes)) {
      starts.push_back(i);
      in_file = 0;
    }
    in_file += payload_bytes[i];
  }
  return starts;
}

std::string DatasetPendingName(int index) {
  return "file-" + std::to_string(index) + ".parquet";
}

ModelMetadata DatasetFileMetadata(ModelMetadata job, int index) {
  job.extra[pq::key::kDatasetFile] = std::to_string(index);
  return job;
}

Status FinishDataset(const std::string& folder, const std::string& path, int count) {
  std::error_code ec;
  for (int i = 1; i <= count; ++i) {
    fs::rename(fs::path(folder) / DatasetPendingName(i),
               fs::path(folder) / DatasetFileName(i, count), ec);
    if (ec) return Status(StatusCode::kIoError, path + ": cannot name file " + std::to_string(i));
  }
  // A previous output moves aside first: a folder is not replaced by rename(2).
  const std::string old = path + ".old-" + std::to_string(::getpid());
  const bool had = fs::exists(path, ec);
  if (had) fs::rename(path, old, ec);
  if (!ec) {
    fs::rename(folder, path, ec);
    std::error_code back;
    if (ec && had) fs::rename(old, path, back);
  }
  if (ec) {
    return Status(StatusCode::kIoError,
                  path + ": cannot move the finished dataset into place (" + ec.message() + ")");
  }
  if (had) fs::remove_all(old, ec);
  return Status::OK();
}

struct ModelDatasetWriter::Impl {
  std::string path, tmp;
  ModelMetadata meta;
  ModelDatasetOptions opt;
  std::unique_ptr<ModelWriter> single;   // max_file_bytes == 0
  std::unique_ptr<ModelWriter> current;  // the file being written
  int files = 0;                         // files opened so far
  uint64_t current_bytes = 0;
  std::set<std::string> names;  // across files (each ModelWriter checks its own)
  bool done = false;

  Status Next() {
    ++files;
    AQ_ASSIGN_OR_RETURN(current,
                        ModelWriter::Open((fs::path(tmp) / DatasetPendingName(files)).string(),
                                          DatasetFileMetadata(meta, files), opt.file));
    current_bytes = 0;
    return Status::OK();
  }
};

ModelDatasetWriter::ModelDatasetWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ModelDatasetWriter::~ModelDatasetWriter() {
  Abort();
}

void ModelDatasetWriter::Abort() {
  if (!impl_ || impl_->done) return;
  impl_->done = true;
  if (impl_->single) impl_->single->Abort();
  if (impl_->current) impl_->current->Abort();
  std::error_code ec;
  if (!impl_->tmp.empty()) fs::remove_all(impl_->tmp, ec);
}

Result<std::unique_ptr<ModelDatasetWriter>> ModelDatasetWriter::Open(
    const std::string& path, ModelMetadata metadata, const ModelDatasetOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->meta = std::move(metadata);
  impl->opt = options;
  if (options.max_file_bytes == 0) {
    AQ_ASSIGN_OR_RETURN(impl->single, ModelWriter::Open(path, impl->meta, options.file));
    return std::unique_ptr<ModelDatasetWriter>(new ModelDatasetWriter(std::move(impl)));
  }
  impl->tmp = path + ".tmp-" + std::to_string(::getpid());
  std::error_code ec;
  fs::remove_all(impl->tmp, ec);  // a stale one of this pid's
  if (!fs::create_directory(impl->tmp, ec)) {
    return Status(StatusCode::kIoError, path + ": cannot create the output (" + ec.message() + ")");
  }
  return std::unique_ptr<ModelDatasetWriter>(new ModelDatasetWriter(std::move(impl)));
}

Status ModelDatasetWriter::Write(const TensorRecord& record) {
  Impl& m = *impl_;
  if (m.done) return Status(StatusCode::kInvalidArgument, m.path + ": writer already closed");
  if (m.single) return m.single->Write(record);
  if (!m.names.insert(record.name).second) {
    return Status(StatusCode::kDuplicateName,
                  m.path + ": tensor '" + record.name + "' written twice");
  }
  const uint64_t bytes = PayloadBytes(record);
  Status st;
  if (m.current && StartsFile(m.current_bytes, bytes, m.opt.max_file_bytes)) {
    st = m.current->Close();
    m.current.reset();
  }
  if (st.ok() && !m.current) st = m.Next();
  if (st.ok()) st = m.current->Write(record);
  if (!st.ok()) {
    Abort();
    return st;
  }
  m.current_bytes += bytes;
  return Status::OK();
}

Status ModelDatasetWriter::Close() {
  Impl& m = *impl_;
  if (m.done) return Status(StatusCode::kInvalidArgument, m.path + ": writer already closed");
  if (m.single) {
    m.done = true;
    return m.single->Close();
  }
  auto finish = [&]() -> Status {
    if (!m.current) AQ_RETURN_IF_ERROR(m.Next());  // no tensors: one empty file
    AQ_RETURN_IF_ERROR(m.current->Close());
    m.current.reset();
    return FinishDataset(m.tmp, m.path, m.files);
  };
  Status st = finish();
  if (!st.ok()) {
    Abort();
    return st;
  }
  m.done = true;
  return Status::OK();
}

}  // namespace arrowquant
