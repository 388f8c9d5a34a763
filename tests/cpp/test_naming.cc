// Naming layouts: detection by prefix, components, the role table, and the default selection
// rules it gives (a single file's first/last layers, norms and time embedding treated as the
// same layers under diffusers' names).
#include <gtest/gtest.h>

#include <regex>
#include <string>
#include <vector>

#include "arrowquant/naming.h"
#include "arrowquant/pipeline.h"

namespace arrowquant {
namespace {

// The first default rule matching `name` (its why), "" when none does.
std::string RuleFor(const Naming& naming, const std::string& name) {
  for (const SelectionRule& r : DefaultSelectionRules("image", naming)) {
    if (std::regex_search(name, std::regex(r.pattern))) return r.why;
  }
  return "";
}

TEST(Naming, OriginalSdFileHasThreeComponentsAndTheirRoles) {
  const std::vector<std::string> names = {
      "model.diffusion_model.input_blocks.0.0.weight",
      "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
      "model.diffusion_model.time_embed.0.weight",
      "model.diffusion_model.out.2.weight",
      "first_stage_model.decoder.conv_out.weight",
      "first_stage_model.encoder.mid.attn_1.q.weight",
      "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
      "alphas_cumprod",
  };
  const Naming n = DetectNaming(names);
  EXPECT_EQ(n.layout, "ldm");
  ASSERT_EQ(n.components.size(), 3u);
  EXPECT_EQ(ComponentOf(n, names[0])->name, "unet");
  EXPECT_EQ(ComponentOf(n, names[4])->name, "vae");
  EXPECT_EQ(ComponentOf(n, names[6])->name, "text_encoder");
  EXPECT_EQ(ComponentOf(n, names[7]), nullptr);
  EXPECT_EQ(RoleOf(n, names[0]), TensorRole::kFirstLayer);
  EXPECT_EQ(RoleOf(n, names[1]), TensorRole::kAttention);
  EXPECT_EQ(RoleOf(n, names[2]), TensorRole::kTimeEmbedding);
  EXPECT_EQ(RoleOf(n, names[3]), TensorRole::kLastLayer);
  EXPECT_EQ(RoleOf(n, names[4]), TensorRole::kLastLayer);
  EXPECT_EQ(RoleOf(n, names[5]), TensorRole::kAttention);
  EXPECT_EQ(RoleOf(n, names[6]), TensorRole::kEmbedding);
  EXPECT_EQ(RoleOf(n, names[7]), TensorRole::kOther);
  // The rules the job compiles for this file: kept first/last layers, INT8 time embedding.
  EXPECT_EQ(RuleFor(n, names[0]), "first or last layer");
  EXPECT_EQ(RuleFor(n, names[3]), "first or last layer");
  EXPECT_EQ(RuleFor(n, names[2]), "time embedding");
  EXPECT_EQ(RuleFor(n, names[1]), "");  // attention: the target width
  // The same layers under diffusers' names, with diffusers' table.
  const Naming d = DetectNaming({"conv_in.weight", "time_embedding.linear_1.weight"});
  EXPECT_EQ(d.layout, "diffusers");
  EXPECT_TRUE(d.components.empty());
  EXPECT_EQ(RuleFor(d, "conv_in.weight"), "first or last layer");
  EXPECT_EQ(RuleFor(d, "time_embedding.linear_1.weight"), "time embedding");
}

TEST(Naming, SdxlFluxAndSd3Layouts) {
  const Naming xl = DetectNaming({"model.diffusion_model.input_blocks.0.0.weight",
                                  "conditioner.embedders.0.transformer.text_model.x",
                                  "conditioner.embedders.1.model.ln_final.weight"});
  EXPECT_EQ(xl.layout, "ldm-sdxl");
  EXPECT_EQ(ComponentOf(xl, "conditioner.embedders.1.model.ln_final.weight")->name,
            "text_encoder_2");
  EXPECT_EQ(RoleOf(xl, "conditioner.embedders.1.model.ln_final.weight"), TensorRole::kNorm);
  const Naming flux = DetectNaming({"double_blocks.0.img_mod.lin.weight", "single_blocks.0.x"});
  EXPECT_EQ(flux.layout, "flux");
  EXPECT_EQ(ComponentOf(flux, "img_in.weight")->name, "transformer");
  EXPECT_EQ(RoleOf(flux, "double_blocks.0.img_mod.lin.weight"), TensorRole::kModulation);
  EXPECT_EQ(RoleOf(flux, "final_layer.linear.weight"), TensorRole::kLastLayer);
  const Naming sd3 = DetectNaming({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
                                   "text_encoders.t5xxl.transformer.shared.weight"});
  EXPECT_EQ(sd3.layout, "sd3");
  EXPECT_EQ(ComponentOf(sd3, "text_encoders.t5xxl.transformer.shared.weight")->name,
            "text_encoder_3");
  EXPECT_EQ(RoleOf(sd3, "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight"),
            TensorRole::kAttention);
  // Every row of every table is a valid regex.
  for (const Naming& n : {xl, flux, sd3, Naming{}}) {
    for (const RolePattern& r : RoleTable(n)) {
      EXPECT_NO_THROW(std::regex(r.pattern, std::regex::ECMAScript)) << r.pattern;
    }
  }
}

}  // namespace
}  // namespace arrowquant
