// How a checkpoint names its tensors: diffusers' names, or one of the single-file layouts users
// download (original CompVis/LDM Stable Diffusion 1.x/2.x and SDXL, Black Forest Labs' FLUX,
// Stability's SD3), where one file holds the denoiser, the VAE and the text encoders under their
// own prefixes. The layout gives each tensor its component (by prefix) and its role (first or last
// layer, time embedding, norm, ...), from one table per layout, so that the selection rules treat
// a layer by what it is rather than by one naming scheme (src/pipeline/selection.cc).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace arrowquant {

enum class TensorRole {
  kOther,
  kFirstLayer,     // the denoiser's/VAE's input convolution or patch projection
  kLastLayer,      // their output convolution or projection
  kTimeEmbedding,  // the timestep (and pooled-text / guidance) embedding MLPs
  kEmbedding,      // lookup tables and position/label embeddings
  kNorm,           // normalization layers
  kModulation,     // adaLN / scale-shift modulation projections
  kAttention,      // attention projections (q, k, v, out; fused qkv)
  kOutputHead,     // a language model's head
};
std::string_view TensorRoleName(TensorRole role);

// One component of a single file: the tensors whose names start with `prefix`.
struct NamingComponent {
  std::string name;    // "unet", "transformer", "vae", "text_encoder", "text_encoder_2", ...
  std::string prefix;  // "model.diffusion_model." ("" for a file of one component)
  std::string kind;    // the table its roles come from: "ldm-unet", "flux", "sd3", "ldm-vae",
                       // "clip", "openclip", "t5"
};

struct Naming {
  // "diffusers" (names as diffusers/transformers models have them), "ldm" (SD 1.x/2.x single
  // file), "ldm-sdxl", "flux", "sd3".
  std::string layout = "diffusers";
  std::vector<NamingComponent> components;  // empty for "diffusers"
  // Why this layout: the prefixes or names found.
  std::string why;
};

// The layout of a lone model's tensor names (a pipeline folder's components are diffusers').
Naming DetectNaming(const std::vector<std::string>& names);

// The component of `name` under `naming` (nullptr: none, as every diffusers name).
const NamingComponent* ComponentOf(const Naming& naming, std::string_view name);

// One row of a layout's role table: names matching `pattern` (ECMAScript regex, searched in the
// full name) have `role`. The first matching row wins.
struct RolePattern {
  std::string pattern;
  TensorRole role;
};
// The table of a layout ("diffusers" or a single-file layout: its components' rows, with their
// prefixes in the patterns), in match order.
std::vector<RolePattern> RoleTable(const Naming& naming);

// The role of one tensor (the table searched in order; kOther when no row matches), and of many
// (the table compiled once).
TensorRole RoleOf(const Naming& naming, std::string_view name);
std::vector<TensorRole> RolesOf(const Naming& naming, const std::vector<std::string>& names);

}  // namespace arrowquant
