// Modality detection, in order: the SafeTensors __metadata__ "modality" key, diffusers
// model_index.json / config.json class names, transformers model_type / architectures, then
// tensor-name patterns. Each answer says which of these decided it.
#include <algorithm>
#include <nlohmann/json.hpp>
#include <regex>

#include "arrowquant/pipeline.h"

namespace arrowquant {
namespace {

using json = nlohmann::json;

struct Pattern {
  const char* regex;
  const char* modality;
};
// Checked in this order: the specific kinds before the general image one.
const Pattern kClassPatterns[] = {
    {"(Audio|Music|Riffusion|Stable.?Audio|Dance|Mel)", "audio"},
    {"(Video|AnimateDiff|I2VGen|Wan|CogVideo|Mochi|LTX|Allegro|Latte|Motion)", "video"},
    {"(Code|Starcoder|DiffuCoder)", "code"},
    {"(LLaDA|MDLM|SEDD|Masked.?Diffusion|Diffu.?LLaMA|Dream|Bert|GPT|Llama|Qwen|CausalLM|MaskedLM|"
     "TextDiffusion)",
     "text"},
    {"(UNet2D|DiT|Transformer2D|PixArt|SD3|Flux|StableDiffusion|Kandinsky|ImagePipeline|DDPM|"
     "AutoencoderKL|VQModel|Sana)",
     "image"},
};

std::string Match(const std::string& text) {
  for (const auto& p : kClassPatterns) {
    if (std::regex_search(text, std::regex(p.regex, std::regex::icase))) return p.modality;
  }
  return "";
}

std::string ClassNames(const std::string& json_text) {
  const json j = json::parse(json_text, nullptr, false);
  if (!j.is_object()) return "";
  std::string out;
  for (const char* key : {"_class_name", "model_type"}) {
    const auto it = j.find(key);
    if (it != j.end() && it->is_string()) out += it->get<std::string>() + " ";
  }
  const auto arch = j.find("architectures");
  if (arch != j.end() && arch->is_array()) {
    for (const auto& a : *arch) {
      if (a.is_string()) out += a.get<std::string>() + " ";
    }
  }
  return out;
}

}  // namespace

std::pair<std::string, std::string> DetectModality(const Checkpoint& ck) {
  for (const auto& c : ck.components()) {
    for (const auto& f : c.files) {
      const auto it = f->metadata().find("modality");
      if (it != f->metadata().end())
        return {it->second, "SafeTensors __metadata__ of " + f->path()};
    }
  }
  if (!ck.model_index_json().empty()) {
    const std::string names = ClassNames(ck.model_index_json());
    if (auto m = Match(names); !m.empty()) return {m, "model_index.json _class_name " + names};
  }
  for (const auto& c : ck.components()) {
    const std::string names = c.class_name + " " + ClassNames(c.config_json);
    if (auto m = Match(names); !m.empty()) return {m, "component class " + names};
  }
  // Tensor names: token embeddings suggest a language model, temporal layers video.
  bool tokens = false, temporal = false;
  for (const auto& t : ck.tensors()) {
    tokens |=
        t.name.find("embed_tokens") != std::string::npos || t.name.find("wte") != std::string::npos;
    temporal |= t.name.find("temporal") != std::string::npos ||
                t.name.find("temp_attn") != std::string::npos;
  }
  if (temporal) return {"video", "tensor names (temporal layers)"};
  if (tokens) return {"text", "tensor names (token embeddings)"};
  return {"image", "default (nothing else decided)"};
}

}  // namespace arrowquant
