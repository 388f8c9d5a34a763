// Which tensors are quantized. The defaults keep what users report as sensitive in diffusion
// models (norms, embeddings, the time embedding, adaLN modulation, first and last layers) and
// quantize every other linear and conv weight, convs included.
#include "arrowquant/pipeline.h"

namespace arrowquant {

std::vector<SelectionRule> DefaultSelectionRules(const std::string& modality) {
  std::vector<SelectionRule> rules = {
      {R"((^|[/.])(norm|norm\d*|ln_\w*|layer_?norm\w*|group_?norm\w*|rms_?norm\w*)[./])", 0,
       "normalization"},
      {R"((time_?embed\w*|timestep_?embed\w*|t_embedder|time_proj|time_emb))", 0, "time embedding"},
      {R"((adaLN_modulation|norm1\.linear|norm1_context\.linear|norm_out\.linear|scale_shift_table|\.emb\.))",
       0, "adaLN / scale-shift modulation"},
      {R"((embed_tokens|embeddings?[./]|wte|wpe|pos_embed|position_embedding|class_embedding|x_embedder|patch_embed|label_emb))",
       0, "embedding"},
      {R"((^|/)(conv_in|conv_out|proj_out(_\d)?|proj_in)\.)", 0, "first or last layer"},
      {R"((lm_head|final_layer|\bout_proj_final))", 0, "output head"},
  };
  if (modality == "audio") {
    rules.push_back({R"((^|/)(vocoder|mel)\w*)", 0, "audio front/back end"});
  }
  return rules;
}

}  // namespace arrowquant
