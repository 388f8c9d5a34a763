// A model checkpoint in any of the layouts users have: one .safetensors file, a sharded
// checkpoint (*.safetensors.index.json), a transformers/diffusers model folder, or a diffusers
// pipeline folder (model_index.json with components such as unet/, transformer/, vae/).
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "arrowquant/naming.h"
#include "arrowquant/safetensors.h"
#include "arrowquant/status.h"

namespace arrowquant {

enum class CheckpointLayout { kSingleFile, kSharded, kPipeline };
std::string_view CheckpointLayoutName(CheckpointLayout layout);

// A tensor of the checkpoint. `file` and `info` are borrowed from the Checkpoint and live as
// long as it does.
struct CheckpointTensor {
  std::string name;  // qualified: "unet/conv_in.weight" in a pipeline, plain otherwise
  // "unet" in a pipeline; in a single file of several components (original/LDM, FLUX, SD3
  // layouts: naming()), the component its prefix names, its name unchanged; else "".
  std::string component;
  const SafeTensorsFile* file;
  const TensorInfo* info;
  std::span<const std::byte> data() const { return file->Data(*info); }
};

struct Component {
  std::string name;         // key in model_index.json, "" for a lone model
  std::string library;      // "diffusers", "transformers", or ""
  std::string class_name;   // e.g. "UNet2DConditionModel"
  std::string folder;       // absolute folder of the weights
  std::string config_json;  // raw config.json beside the weights, "" if absent
  std::vector<std::shared_ptr<SafeTensorsFile>> files;  // shards in index order
};

class Checkpoint {
 public:
  static Result<std::unique_ptr<Checkpoint>> Open(const std::string& path,
                                                  const ReaderLimits& limits = {});

  CheckpointLayout layout() const { return layout_; }
  const std::string& path() const { return path_; }
  const std::string& model_index_json() const { return model_index_json_; }
  const std::vector<Component>& components() const { return components_; }
  // How a lone model names its tensors (a pipeline's components: "diffusers").
  const Naming& naming() const { return naming_; }
  // Every tensor, component by component, shard by shard, in file order.
  const std::vector<CheckpointTensor>& tensors() const { return tensors_; }
  const CheckpointTensor* Find(std::string_view name) const;
  uint64_t total_tensor_bytes() const;

 private:
  Checkpoint() = default;
  Status AddComponent(Component component, const ReaderLimits& limits);
  // A lone model's naming layout, and each tensor's component under it.
  void NameComponents();

  CheckpointLayout layout_ = CheckpointLayout::kSingleFile;
  std::string path_;
  std::string model_index_json_;
  std::vector<Component> components_;
  Naming naming_;
  std::vector<CheckpointTensor> tensors_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

}  // namespace arrowquant
