// Which tensors are quantized, and how. The defaults give what users report as sensitive in
// diffusion models more precision: the time embedding gets INT8 whatever the target width,
// adaLN / scale-shift modulation a tighter threshold; norms, embeddings, first and last layers
// stay unquantized. Every other linear and conv weight, convs included, takes the target width.
#include "arrowquant/pipeline.h"

namespace arrowquant {

std::vector<SelectionRule> DefaultSelectionRules(const std::string& modality) {
  std::vector<SelectionRule> rules = {
      // Before the norm rule: norm1.linear is a modulation projection, not a norm.
      // adaLN holds a third of a DiT's weights: INT8 for all of it would cost the size target, so
      // it takes the target width but must meet 3/4 of the threshold, else it climbs.
      {R"((adaLN_modulation|norm1\.linear|norm1_context\.linear|norm_out\.linear|)"
       R"(scale_shift_table|\.emb\.|(^|/)proj_out_1\.))",
       -1, "adaLN / scale-shift modulation (sensitive: 3/4 of the threshold)", 0.75},
      {R"((^|[/.])(norm|norm\d*|ln_\w*|layer_?norm\w*|group_?norm\w*|rms_?norm\w*)[./])", 0,
       "normalization"},
      // The time embedding itself (not each block's time_emb_proj, quantized like any linear).
      {R"((^|[/.])(time_embedding|time_embed|timestep_embedder|t_embedder|time_proj|)"
       R"(time_text_embed)[./])",
       8, "time embedding"},
      {R"((embed_tokens|embeddings?[./]|wte|wpe|pos_embed|position_embedding|class_embedding|)"
       R"(x_embedder|patch_embed|label_emb))",
       0, "embedding"},
      {R"((^|/)(conv_in|conv_out|proj_out(_2)?|proj_in)\.)", 0, "first or last layer"},
      {R"((lm_head|final_layer|\bout_proj_final))", 0, "output head"},
  };
  if (modality == "audio") {
    rules.push_back({R"((^|/)(vocoder|mel)\w*)", 0, "audio front/back end"});
  }
  return rules;
}

}  // namespace arrowquant
