// Naming layouts and the role table (include/arrowquant/naming.h). Each component kind's rows
// are written relative to the component's prefix; RoleTable anchors them at it.
#include "arrowquant/naming.h"

#include <algorithm>
#include <regex>

namespace arrowquant {
namespace {

struct LocalRow {
  const char* pattern;  // matched right after the component's prefix
  TensorRole role;
};

// "Anywhere at a name segment": the start of the component's names or after a dot.
#define AQ_SEG "(.*\\.)?"

// diffusers/transformers names. The patterns (and their order) are the selection rules' until
// 2026-12 with one role each, plus what those rules misfiled: a FLUX single block's
// AdaLayerNormZeroSingle projection (norm.linear) is modulation, not a norm; SDXL's
// add_embedding MLP (time ids and pooled text) is embedded as the time is; conv_norm_out and
// final_layer_norm are norms (1-D: kept either way). Attention rows name a role only.
const std::vector<RolePattern>& DiffusersTable() {
  static const std::vector<RolePattern> rows = {
      // Before the adaLN row: a DiT block's norm1.emb holds its own label embedding table.
      {R"((class_embedder|embedding_table)[./])", TensorRole::kEmbedding},
      // Before the norm row: norm1.linear / norm.linear are modulation projections.
      {R"((adaLN_modulation|norm1\.linear|norm1_context\.linear|norm_out\.linear|)"
       R"((^|[/.])norm\.linear\.|scale_shift_table|\.emb\.|(^|/)proj_out_1\.))",
       TensorRole::kModulation},
      {R"((^|[/.])(norm|norm\d*|ln_\w*|layer_?norm\w*|group_?norm\w*|rms_?norm\w*|)"
       R"(conv_norm_out|final_layer_norm)[./])",
       TensorRole::kNorm},
      // The time embedding itself (not each block's time_emb_proj, quantized like any linear).
      {R"((^|[/.])(time_embedding|time_embed|timestep_embedder|t_embedder|time_proj|)"
       R"(time_text_embed|add_embedding)[./])",
       TensorRole::kTimeEmbedding},
      {R"((embed_tokens|embeddings?[./]|wte|wpe|pos_embed|position_embedding|class_embedding|)"
       R"(x_embedder|patch_embed|label_emb))",
       TensorRole::kEmbedding},
      // A VAE's encoder and decoder each have their own first and last convolution.
      {R"((^|/|(en|de)coder\.)(conv_in|proj_in)\.)", TensorRole::kFirstLayer},
      {R"((^|/|(en|de)coder\.)(conv_out|proj_out(_2)?)\.)", TensorRole::kLastLayer},
      {R"((lm_head|final_layer|\bout_proj_final))", TensorRole::kOutputHead},
      {R"((^|[/.])(attn\d?|attention|attentions\.\d+|self_attn|SelfAttention)\.)"
       R"((to_q|to_k|to_v|to_qkv|to_out\.0|add_[qkv]_proj|to_add_out|[qkvo]|[qkv]_proj|out_proj)\.)",
       TensorRole::kAttention},
  };
  return rows;
}

// Original Stable Diffusion UNet (openaimodel.py names) under model.diffusion_model.
const std::vector<LocalRow> kLdmUnet = {
    {"time_embed\\.", TensorRole::kTimeEmbedding},
    // SDXL: label_emb.0 is the MLP of the time ids and pooled text (diffusers' add_embedding);
    // class-conditional SD: a lookup table.
    {"label_emb\\.0\\.[02]\\.", TensorRole::kTimeEmbedding},
    {"label_emb\\.", TensorRole::kEmbedding},
    {"input_blocks\\.0\\.0\\.", TensorRole::kFirstLayer},
    {"out\\.2\\.", TensorRole::kLastLayer},
    {"out\\.0\\.", TensorRole::kNorm},
    {AQ_SEG "(in_layers\\.0|out_layers\\.0|norm\\d?)\\.", TensorRole::kNorm},
    {AQ_SEG "attn\\d\\.(to_q|to_k|to_v|to_out\\.0)\\.", TensorRole::kAttention},
};

// Original AutoencoderKL (first_stage_model.).
const std::vector<LocalRow> kLdmVae = {
    {"(encoder|decoder)\\.conv_in\\.", TensorRole::kFirstLayer},
    {"(encoder|decoder)\\.conv_out\\.", TensorRole::kLastLayer},
    {AQ_SEG "(norm\\d?|norm_out)\\.", TensorRole::kNorm},
    {AQ_SEG "attn_1\\.(q|k|v|proj_out)\\.", TensorRole::kAttention},
};

// transformers' CLIPTextModel (SD 1.x, SDXL's first encoder, SD3/FLUX clip_l/clip_g).
const std::vector<LocalRow> kClip = {
    {AQ_SEG "embeddings\\.", TensorRole::kEmbedding},
    {AQ_SEG "(layer_norm\\d|final_layer_norm)\\.", TensorRole::kNorm},
    {AQ_SEG "self_attn\\.(q_proj|k_proj|v_proj|out_proj)\\.", TensorRole::kAttention},
};

// OpenCLIP's text tower (SD 2.x, SDXL's second encoder).
const std::vector<LocalRow> kOpenClip = {
    {AQ_SEG "(token_embedding|positional_embedding)", TensorRole::kEmbedding},
    {AQ_SEG "(ln_1|ln_2|ln_final)\\.", TensorRole::kNorm},
    {AQ_SEG "attn\\.(in_proj_weight|in_proj_bias|out_proj\\.)", TensorRole::kAttention},
};

// transformers' T5 encoder (SD3/FLUX t5xxl).
const std::vector<LocalRow> kT5 = {
    {AQ_SEG "(shared|embed_tokens|relative_attention_bias)\\.", TensorRole::kEmbedding},
    {AQ_SEG "(layer_norm|final_layer_norm)\\.", TensorRole::kNorm},
    {AQ_SEG "SelfAttention\\.(q|k|v|o)\\.", TensorRole::kAttention},
};

// Black Forest Labs' FLUX (flux/model.py names).
const std::vector<LocalRow> kFlux = {
    {"img_in\\.", TensorRole::kFirstLayer},
    {"final_layer\\.adaLN_modulation\\.", TensorRole::kModulation},
    {"final_layer\\.linear\\.", TensorRole::kLastLayer},
    {AQ_SEG "(img_mod|txt_mod|modulation)\\.lin\\.", TensorRole::kModulation},
    {"(time_in|vector_in|guidance_in)\\.", TensorRole::kTimeEmbedding},
    {AQ_SEG "(query_norm|key_norm|norm)\\.", TensorRole::kNorm},
    {AQ_SEG "(img_attn|txt_attn)\\.(qkv|proj)\\.", TensorRole::kAttention},
};

// Stability's SD3 MMDiT (sd3 mmdit.py names).
const std::vector<LocalRow> kSd3 = {
    {"x_embedder\\.", TensorRole::kFirstLayer},
    {"pos_embed", TensorRole::kEmbedding},
    {"(t_embedder|y_embedder)\\.", TensorRole::kTimeEmbedding},
    {AQ_SEG "adaLN_modulation\\.", TensorRole::kModulation},
    {"final_layer\\.linear\\.", TensorRole::kLastLayer},
    {AQ_SEG "(ln_q|ln_k|ln_k_added|ln_q_added)\\.", TensorRole::kNorm},
    {AQ_SEG "attn\\d?\\.(qkv|proj)\\.", TensorRole::kAttention},
};

#undef AQ_SEG

const std::vector<LocalRow>* KindTable(const std::string& kind) {
  if (kind == "ldm-unet") return &kLdmUnet;
  if (kind == "ldm-vae") return &kLdmVae;
  if (kind == "clip") return &kClip;
  if (kind == "openclip") return &kOpenClip;
  if (kind == "t5") return &kT5;
  if (kind == "flux") return &kFlux;
  if (kind == "sd3") return &kSd3;
  return nullptr;
}

std::string EscapeRegex(const std::string& s) {
  static const std::string special = R"(\^$.|?*+()[]{})";
  std::string out;
  for (char c : s) {
    if (special.find(c) != std::string::npos) out += '\\';
    out += c;
  }
  return out;
}

bool AnyStartsWith(const std::vector<std::string>& names, std::string_view prefix) {
  return std::any_of(names.begin(), names.end(),
                     [&](const std::string& n) { return n.starts_with(prefix); });
}

// Single-file components: prefix, component name, kind, and the prefix that proves it (a name
// under `probe`).
struct Candidate {
  const char* prefix;
  const char* name;
  const char* kind;
  const char* probe;
};
constexpr Candidate kCandidates[] = {
    {"model.diffusion_model.", "unet", "ldm-unet", "model.diffusion_model.input_blocks."},
    {"model.diffusion_model.", "transformer", "flux", "model.diffusion_model.double_blocks."},
    {"model.diffusion_model.", "transformer", "sd3", "model.diffusion_model.joint_blocks."},
    {"first_stage_model.", "vae", "ldm-vae", "first_stage_model."},
    {"cond_stage_model.transformer.", "text_encoder", "clip", "cond_stage_model.transformer."},
    {"cond_stage_model.model.", "text_encoder", "openclip", "cond_stage_model.model."},
    {"conditioner.embedders.0.transformer.", "text_encoder", "clip",
     "conditioner.embedders.0.transformer."},
    {"conditioner.embedders.1.model.", "text_encoder_2", "openclip",
     "conditioner.embedders.1.model."},
    {"text_encoders.clip_l.", "text_encoder", "clip", "text_encoders.clip_l."},
    {"text_encoders.clip_g.", "text_encoder_2", "clip", "text_encoders.clip_g."},
    {"text_encoders.t5xxl.", "text_encoder_3", "t5", "text_encoders.t5xxl."},
};

}  // namespace

std::string_view TensorRoleName(TensorRole role) {
  switch (role) {
    case TensorRole::kOther: return "other";
    case TensorRole::kFirstLayer: return "first layer";
    case TensorRole::kLastLayer: return "last layer";
    case TensorRole::kTimeEmbedding: return "time embedding";
    case TensorRole::kEmbedding: return "embedding";
    case TensorRole::kNorm: return "norm";
    case TensorRole::kModulation: return "modulation";
    case TensorRole::kAttention: return "attention";
    case TensorRole::kOutputHead: return "output head";
  }
  return "other";
}

Naming DetectNaming(const std::vector<std::string>& names) {
  Naming n;
  for (const Candidate& c : kCandidates) {
    if (!AnyStartsWith(names, c.probe)) continue;
    const bool taken = std::any_of(n.components.begin(), n.components.end(),
                                   [&](const NamingComponent& x) { return x.prefix == c.prefix; });
    if (taken) continue;
    n.components.push_back({c.name, c.prefix, c.kind});
    n.why += std::string(n.why.empty() ? "" : ", ") + c.probe + "*";
  }
  // Black Forest Labs' own FLUX file: the transformer's names without a prefix.
  if (n.components.empty() && AnyStartsWith(names, "double_blocks.") &&
      AnyStartsWith(names, "single_blocks.")) {
    n.components.push_back({"transformer", "", "flux"});
    n.why = "double_blocks.* and single_blocks.*";
  }
  if (n.components.empty()) {
    n.why = "no single-file prefixes";
    return n;
  }
  auto has = [&](std::string_view kind) {
    return std::any_of(n.components.begin(), n.components.end(),
                       [&](const NamingComponent& x) { return x.kind == kind; });
  };
  if (has("flux")) {
    n.layout = "flux";
  } else if (has("sd3")) {
    n.layout = "sd3";
  } else if (AnyStartsWith(names, "conditioner.embedders.")) {
    n.layout = "ldm-sdxl";
  } else {
    n.layout = "ldm";
  }
  return n;
}

const NamingComponent* ComponentOf(const Naming& naming, std::string_view name) {
  const NamingComponent* best = nullptr;
  for (const NamingComponent& c : naming.components) {
    if (name.starts_with(c.prefix) && (best == nullptr || c.prefix.size() > best->prefix.size())) {
      best = &c;
    }
  }
  return best;
}

std::vector<RolePattern> RoleTable(const Naming& naming) {
  if (naming.components.empty()) return DiffusersTable();
  std::vector<RolePattern> out;
  for (const NamingComponent& c : naming.components) {
    const std::vector<LocalRow>* rows = KindTable(c.kind);
    if (rows == nullptr) continue;
    for (const LocalRow& r : *rows) {
      out.push_back({"^" + EscapeRegex(c.prefix) + r.pattern, r.role});
    }
  }
  return out;
}

std::vector<TensorRole> RolesOf(const Naming& naming, const std::vector<std::string>& names) {
  std::vector<std::pair<std::regex, TensorRole>> table;
  for (const RolePattern& r : RoleTable(naming)) {
    table.emplace_back(std::regex(r.pattern, std::regex::ECMAScript), r.role);
  }
  std::vector<TensorRole> out(names.size(), TensorRole::kOther);
  for (size_t i = 0; i < names.size(); ++i) {
    for (const auto& [re, role] : table) {
      if (std::regex_search(names[i], re)) {
        out[i] = role;
        break;
      }
    }
  }
  return out;
}

TensorRole RoleOf(const Naming& naming, std::string_view name) {
  return RolesOf(naming, {std::string(name)})[0];
}

}  // namespace arrowquant
