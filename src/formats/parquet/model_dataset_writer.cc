// A model as a Parquet dataset (model_file.h, ModelDatasetOptions): ModelWriters one after the
// other in a temporary folder, renamed to their final names (which carry the count) and moved
// into place at the end.
#include <unistd.h>

#include <filesystem>
#include <set>
#include <system_error>

#include "arrowquant/model_file.h"
#include "formats/parquet/model_schema.h"

namespace arrowquant {

namespace fs = std::filesystem;

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

  // A file's name while the count is not known yet.
  std::string Numbered(int i) const {
    return (fs::path(tmp) / ("file-" + std::to_string(i) + ".parquet")).string();
  }
  Status Next() {
    ModelMetadata m = meta;
    m.extra[pq::key::kDatasetFile] = std::to_string(++files);
    AQ_ASSIGN_OR_RETURN(current, ModelWriter::Open(Numbered(files), std::move(m), opt.file));
    current_bytes = 0;
    return Status::OK();
  }
};

namespace {

// What a record adds to its file's payload before compression: the split rule's measure.
uint64_t PayloadBytes(const TensorRecord& r) {
  if (!r.quantized) return r.raw.size();
  const QuantizedTensor& q = *r.quantized;
  return q.codes.size() + q.scales.size() + q.zeros.size() + q.super_scales.size();
}

}  // namespace

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
  if (m.current && m.current_bytes > 0 && m.current_bytes + bytes > m.opt.max_file_bytes) {
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
    std::error_code ec;
    for (int i = 1; i <= m.files; ++i) {
      fs::rename(m.Numbered(i), fs::path(m.tmp) / DatasetFileName(i, m.files), ec);
      if (ec)
        return Status(StatusCode::kIoError, m.path + ": cannot name file " + std::to_string(i));
    }
    // A previous output moves aside first: a folder is not replaced by rename(2).
    const std::string old = m.path + ".old-" + std::to_string(::getpid());
    const bool had = fs::exists(m.path, ec);
    if (had) fs::rename(m.path, old, ec);
    if (!ec) {
      fs::rename(m.tmp, m.path, ec);
      std::error_code back;
      if (ec && had) fs::rename(old, m.path, back);
    }
    if (ec)
      return Status(
          StatusCode::kIoError,
          m.path + ": cannot move the finished dataset into place (" + ec.message() + ")");
    if (had) fs::remove_all(old, ec);
    return Status::OK();
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
