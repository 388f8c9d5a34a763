// Layout discovery and the sharded index. Every path taken from a model file (shard names,
// component folders) must stay inside the folder that named it, symlinks resolved.
#include "arrowquant/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

namespace arrowquant {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr uint64_t kMaxJsonSidecarBytes = 64ull << 20;  // index / config / model_index files
constexpr std::string_view kIndexSuffix = ".safetensors.index.json";

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

Result<std::string> ReadSmallFile(const fs::path& p) {
  std::error_code ec;
  const auto size = fs::file_size(p, ec);
  if (ec) return Status(StatusCode::kIoError, p.string() + ": cannot stat: " + ec.message());
  if (size > kMaxJsonSidecarBytes) {
    return Status(StatusCode::kLimitExceeded, p.string() + ": " + std::to_string(size) +
                                                  " bytes is too large for a JSON side file");
  }
  std::ifstream in(p, std::ios::binary);
  if (!in) return Status(StatusCode::kIoError, p.string() + ": cannot open");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// `rel` must name something inside `base` once symlinks are resolved.
Result<fs::path> ResolveInside(const fs::path& base, std::string_view rel, std::string_view what,
                               const std::string& referrer) {
  auto escape = [&](const std::string& why) {
    return Status(StatusCode::kPathEscape,
                  referrer + ": " + std::string(what) + " '" + std::string(rel) + "' " + why);
  };
  const fs::path r(rel);
  if (rel.empty() || r.is_absolute() || r.has_root_name()) {
    return escape("is not a relative path inside the model folder");
  }
  for (const auto& part : r) {
    if (part == "..") return escape("contains '..': refusing a path outside the model folder");
  }
  std::error_code ec;
  const fs::path real_base = fs::canonical(base, ec);
  if (ec) return Status(StatusCode::kIoError, base.string() + ": " + ec.message());
  const fs::path candidate = base / r;
  const fs::path real = fs::weakly_canonical(candidate, ec);
  if (ec) return Status(StatusCode::kIoError, candidate.string() + ": " + ec.message());
  const auto mismatch = std::mismatch(real_base.begin(), real_base.end(), real.begin(), real.end());
  if (mismatch.first != real_base.end()) return escape("resolves outside " + real_base.string());
  return real;
}

struct WeightsPlan {
  bool sharded = false;
  fs::path file;  // the .safetensors file or the index
};

// Decides which weight file(s) of a folder to read; refuses to guess between candidates.
Result<WeightsPlan> PlanFolder(const fs::path& dir) {
  std::vector<fs::path> indexes, singles;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (EndsWith(name, kIndexSuffix))
      indexes.push_back(entry.path());
    else if (EndsWith(name, ".safetensors"))
      singles.push_back(entry.path());
  }
  if (ec) return Status(StatusCode::kIoError, dir.string() + ": cannot list: " + ec.message());
  auto pick = [&](std::vector<fs::path>& found,
                  std::initializer_list<std::string_view> canonical) -> Result<fs::path> {
    std::sort(found.begin(), found.end());
    if (found.size() == 1) return found[0];
    for (auto c : canonical) {
      for (const auto& f : found) {
        if (f.filename() == c) return f;
      }
    }
    std::string names;
    for (const auto& f : found) names += (names.empty() ? "" : ", ") + f.filename().string();
    return Status(StatusCode::kAmbiguousLayout,
                  dir.string() + ": several candidate weight files (" + names + "); pass one");
  };
  if (!indexes.empty()) {
    AQ_ASSIGN_OR_RETURN(fs::path p, pick(indexes, {"diffusion_pytorch_model.safetensors.index.json",
                                                   "model.safetensors.index.json"}));
    return WeightsPlan{true, p};
  }
  if (!singles.empty()) {
    AQ_ASSIGN_OR_RETURN(
        fs::path p, pick(singles, {"diffusion_pytorch_model.safetensors", "model.safetensors"}));
    return WeightsPlan{false, p};
  }
  return Status(StatusCode::kNotAModel, dir.string() + ": no .safetensors weights in this folder");
}

// Opens the shards of an index and checks that index and shards agree.
Status OpenSharded(const fs::path& index_path, const ReaderLimits& limits, Component& comp) {
  const std::string label = index_path.string();
  AQ_ASSIGN_OR_RETURN(std::string text, ReadSmallFile(index_path));
  const json root = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return Status(StatusCode::kIndexInvalid, label + ": not a JSON object");
  }
  const auto wm = root.find("weight_map");
  if (wm == root.end() || !wm->is_object()) {
    return Status(StatusCode::kIndexInvalid, label + ": missing 'weight_map' object");
  }
  std::vector<std::string> shard_names;
  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& [tensor, shard] : wm->items()) {
    if (!shard.is_string()) {
      return Status(StatusCode::kIndexInvalid,
                    label + ": weight_map entry for tensor '" + tensor + "' is not a string");
    }
    const auto& s = shard.get_ref<const std::string&>();
    if (!by_shard.count(s)) shard_names.push_back(s);
    by_shard[s].push_back(tensor);
  }
  if (shard_names.empty()) return Status(StatusCode::kIndexInvalid, label + ": empty weight_map");
  std::sort(shard_names.begin(), shard_names.end());
  const fs::path dir = index_path.parent_path();
  for (const auto& s : shard_names) {
    AQ_ASSIGN_OR_RETURN(fs::path p, ResolveInside(dir, s, "shard", label));
    AQ_ASSIGN_OR_RETURN(std::shared_ptr<SafeTensorsFile> f,
                        SafeTensorsFile::Open(p.string(), limits));
    std::set<std::string, std::less<>> listed(by_shard[s].begin(), by_shard[s].end());
    for (const auto& t : listed) {
      if (f->Find(t) == nullptr) {
        return Status(
            StatusCode::kIndexMismatch,
            label + ": tensor '" + t + "' is listed in shard " + s + " but not found there");
      }
    }
    for (const auto& t : f->tensors()) {
      if (!listed.count(t.name)) {
        return Status(StatusCode::kIndexMismatch, label + ": tensor '" + t.name + "' is in shard " +
                                                      s + " but the index does not list it there");
      }
    }
    comp.files.push_back(std::move(f));
  }
  return Status::OK();
}

Status LoadWeights(const fs::path& target, bool sharded, const ReaderLimits& limits,
                   Component& comp) {
  comp.folder = target.parent_path().string();
  if (sharded) return OpenSharded(target, limits, comp);
  AQ_ASSIGN_OR_RETURN(std::shared_ptr<SafeTensorsFile> f,
                      SafeTensorsFile::Open(target.string(), limits));
  comp.files.push_back(std::move(f));
  return Status::OK();
}

void ReadConfig(Component& comp) {
  const fs::path cfg = fs::path(comp.folder) / "config.json";
  std::error_code ec;
  if (!fs::is_regular_file(cfg, ec)) return;
  auto text = ReadSmallFile(cfg);
  if (text.ok()) comp.config_json = *text;
  if (comp.class_name.empty() && !comp.config_json.empty()) {
    const json j = json::parse(comp.config_json, nullptr, false);
    if (j.is_object()) {
      const auto cn = j.find("_class_name");
      if (cn != j.end() && cn->is_string()) comp.class_name = cn->get<std::string>();
    }
  }
}

// PyTorch's own formats execute code when loaded (pickle); ArrowQuant never loads them. Say so
// instead of reporting a nonsensical SafeTensors header length.
Status RefusePickle(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  unsigned char head[4] = {0, 0, 0, 0};
  in.read(reinterpret_cast<char*>(head), 4);
  const bool zip = head[0] == 'P' && head[1] == 'K' && head[2] == 3 && head[3] == 4;
  const bool pickle = head[0] == 0x80 && head[1] >= 2 && head[1] <= 5;
  if (!zip && !pickle) return Status::OK();
  return Status(StatusCode::kUnsupported,
                p.string() +
                    ": a PyTorch pickle/zip checkpoint, not SafeTensors; ArrowQuant does not "
                    "unpickle model files unless asked (--allow-pickle: torch.load with "
                    "weights_only=True), or convert it to .safetensors first");
}

}  // namespace

std::string_view CheckpointLayoutName(CheckpointLayout layout) {
  switch (layout) {
    case CheckpointLayout::kSingleFile: return "single-file";
    case CheckpointLayout::kSharded: return "sharded";
    case CheckpointLayout::kPipeline: return "diffusers-pipeline";
  }
  return "unknown";
}

Status Checkpoint::AddComponent(Component comp, const ReaderLimits& limits) {
  uint64_t total = total_tensor_bytes();
  const std::string prefix = comp.name.empty() ? "" : comp.name + "/";
  components_.push_back(std::move(comp));
  const Component& c = components_.back();
  for (const auto& file : c.files) {
    for (const auto& info : file->tensors()) {
      CheckpointTensor t{prefix + info.name, c.name, file.get(), &info};
      if (by_name_.count(t.name)) {
        return Status(StatusCode::kDuplicateName,
                      file->path() + ": tensor '" + info.name + "' appears in two files");
      }
      total += info.nbytes();
      if (total > limits.max_total_bytes || tensors_.size() >= limits.max_tensors) {
        return Status(StatusCode::kLimitExceeded,
                      path_ + ": checkpoint exceeds the configured tensor count or byte limit");
      }
      by_name_.emplace(t.name, tensors_.size());
      tensors_.push_back(std::move(t));
    }
  }
  return Status::OK();
}

void Checkpoint::NameComponents() {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const CheckpointTensor& t : tensors_) names.push_back(t.name);
  naming_ = DetectNaming(names);
  for (CheckpointTensor& t : tensors_) {
    const NamingComponent* c = ComponentOf(naming_, t.name);
    if (c != nullptr) t.component = c->name;
  }
}

Result<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& path,
                                                     const ReaderLimits& limits) {
  std::unique_ptr<Checkpoint> ck(new Checkpoint());
  ck->path_ = path;
  std::error_code ec;
  const fs::path p(path);
  const auto st = fs::status(p, ec);
  if (ec || !fs::exists(st)) {
    return Status(StatusCode::kNotFound, path + ": no such file or folder");
  }
  if (fs::is_regular_file(st)) {
    AQ_RETURN_IF_ERROR(RefusePickle(p));
    Component comp;
    const bool sharded = EndsWith(p.filename().string(), kIndexSuffix);
    ck->layout_ = sharded ? CheckpointLayout::kSharded : CheckpointLayout::kSingleFile;
    AQ_RETURN_IF_ERROR(LoadWeights(fs::absolute(p), sharded, limits, comp));
    ReadConfig(comp);
    AQ_RETURN_IF_ERROR(ck->AddComponent(std::move(comp), limits));
    ck->NameComponents();
    return ck;
  }
  if (!fs::is_directory(st)) return Status(StatusCode::kNotAModel, path + ": not a file or folder");

  const fs::path root = fs::absolute(p);
  const fs::path model_index = root / "model_index.json";
  if (!fs::is_regular_file(model_index, ec)) {
    AQ_ASSIGN_OR_RETURN(WeightsPlan plan, PlanFolder(root));
    Component comp;
    ck->layout_ = plan.sharded ? CheckpointLayout::kSharded : CheckpointLayout::kSingleFile;
    AQ_RETURN_IF_ERROR(LoadWeights(plan.file, plan.sharded, limits, comp));
    ReadConfig(comp);
    AQ_RETURN_IF_ERROR(ck->AddComponent(std::move(comp), limits));
    ck->NameComponents();
    return ck;
  }

  ck->layout_ = CheckpointLayout::kPipeline;
  AQ_ASSIGN_OR_RETURN(ck->model_index_json_, ReadSmallFile(model_index));
  const json idx = json::parse(ck->model_index_json_, nullptr, /*allow_exceptions=*/false);
  if (idx.is_discarded() || !idx.is_object()) {
    return Status(StatusCode::kIndexInvalid, model_index.string() + ": not a JSON object");
  }
  for (const auto& [key, value] : idx.items()) {
    // Components are ["library", "ClassName"]; keys starting with '_' are pipeline settings.
    if (key.empty() || key[0] == '_' || !value.is_array() || value.size() != 2) continue;
    if (!value[0].is_string() || !value[1].is_string()) continue;  // [null, null]: absent
    AQ_ASSIGN_OR_RETURN(fs::path dir,
                        ResolveInside(root, key, "component folder", model_index.string()));
    if (!fs::is_directory(dir, ec)) continue;  // e.g. a scheduler saved elsewhere
    auto plan = PlanFolder(dir);
    if (!plan.ok()) {
      if (plan.status().code() == StatusCode::kNotAModel) continue;  // tokenizer, scheduler
      return plan.status();
    }
    Component comp;
    comp.name = key;
    comp.library = value[0].get<std::string>();
    comp.class_name = value[1].get<std::string>();
    AQ_RETURN_IF_ERROR(LoadWeights(plan->file, plan->sharded, limits, comp));
    ReadConfig(comp);
    AQ_RETURN_IF_ERROR(ck->AddComponent(std::move(comp), limits));
  }
  if (ck->components_.empty()) {
    return Status(StatusCode::kNotAModel,
                  path + ": model_index.json names no component with .safetensors weights");
  }
  return ck;
}

const CheckpointTensor* Checkpoint::Find(std::string_view name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

uint64_t Checkpoint::total_tensor_bytes() const {
  uint64_t total = 0;
  for (const auto& t : tensors_) total += t.info->nbytes();
  return total;
}

}  // namespace arrowquant
