#include <gtest/gtest.h>

#include <filesystem>

#include "arrowquant/checkpoint.h"
#include "safetensors_builder.h"

namespace arrowquant {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;
using testing::ValidFile;
using testing::WriteFile;

std::string Shard(const std::string& name) {
  return ValidFile({{name, "F16", {2}, "abcd"}});
}

std::string Index(const std::string& weight_map) {
  return R"({"metadata":{"total_size":8},"weight_map":{)" + weight_map + "}}";
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(CheckpointTest, SingleFileAndFolder) {
  WriteFile(dir_ / "model.safetensors", Shard("w"));
  for (const auto& p : {dir_ / "model.safetensors", dir_}) {
    auto ck = Checkpoint::Open(p.string());
    ASSERT_TRUE(ck.ok()) << ck.status().ToString();
    EXPECT_EQ((*ck)->layout(), CheckpointLayout::kSingleFile);
    ASSERT_EQ((*ck)->tensors().size(), 1u);
    EXPECT_EQ((*ck)->tensors()[0].name, "w");
    EXPECT_EQ(std::string(reinterpret_cast<const char*>((*ck)->Find("w")->data().data()), 4),
              "abcd");
  }
}

TEST_F(CheckpointTest, Sharded) {
  WriteFile(dir_ / "model-00001-of-00002.safetensors", Shard("a"));
  WriteFile(dir_ / "model-00002-of-00002.safetensors", Shard("b"));
  WriteFile(
      dir_ / "model.safetensors.index.json",
      Index(R"("a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors")"));
  auto ck = Checkpoint::Open(dir_.string());
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  EXPECT_EQ((*ck)->layout(), CheckpointLayout::kSharded);
  EXPECT_EQ((*ck)->tensors().size(), 2u);
  EXPECT_EQ((*ck)->components()[0].files.size(), 2u);
  EXPECT_EQ((*ck)->total_tensor_bytes(), 8u);
}

TEST_F(CheckpointTest, ShardEscapes) {
  WriteFile(dir_ / "outside.safetensors", Shard("a"));
  const auto model = dir_ / "model";
  fs::create_directories(model);
  const std::pair<std::string, std::string> cases[] = {
      {"dotdot", R"("a":"../outside.safetensors")"},
      {"absolute", R"("a":")" + (dir_ / "outside.safetensors").string() + R"(")"},
      {"nested dotdot", R"("a":"sub/../../outside.safetensors")"},
  };
  for (const auto& [label, map] : cases) {
    WriteFile(model / "model.safetensors.index.json", Index(map));
    auto ck = Checkpoint::Open(model.string());
    ASSERT_FALSE(ck.ok()) << label;
    EXPECT_EQ(ck.status().code(), StatusCode::kPathEscape)
        << label << ": " << ck.status().ToString();
  }
  fs::create_symlink(dir_ / "outside.safetensors", model / "link.safetensors");
  WriteFile(model / "model.safetensors.index.json", Index(R"("a":"link.safetensors")"));
  auto ck = Checkpoint::Open(model.string());
  EXPECT_EQ(ck.status().code(), StatusCode::kPathEscape) << ck.status().ToString();
}

TEST_F(CheckpointTest, IndexProblems) {
  WriteFile(dir_ / "s1.safetensors", Shard("a"));
  struct Case {
    const char* label;
    std::string index;
    StatusCode code;
  } cases[] = {
      {"not json", "{oops", StatusCode::kIndexInvalid},
      {"no weight_map", R"({"metadata":{}})", StatusCode::kIndexInvalid},
      {"shard name not a string", Index(R"("a":3)"), StatusCode::kIndexInvalid},
      {"empty weight_map", Index(""), StatusCode::kIndexInvalid},
      {"tensor missing from shard", Index(R"("a":"s1.safetensors","zz":"s1.safetensors")"),
       StatusCode::kIndexMismatch},
      {"missing shard", Index(R"("a":"s2.safetensors")"), StatusCode::kNotFound},
  };
  for (const auto& c : cases) {
    WriteFile(dir_ / "model.safetensors.index.json", c.index);
    auto ck = Checkpoint::Open((dir_ / "model.safetensors.index.json").string());
    ASSERT_FALSE(ck.ok()) << c.label;
    EXPECT_EQ(ck.status().code(), c.code) << c.label << ": " << ck.status().ToString();
  }
  // A tensor that the shard holds but the index does not list.
  WriteFile(dir_ / "s3.safetensors",
            ValidFile({{"a", "F16", {2}, "abcd"}, {"b", "F16", {2}, "efgh"}}));
  WriteFile(dir_ / "model.safetensors.index.json", Index(R"("a":"s3.safetensors")"));
  EXPECT_EQ(Checkpoint::Open(dir_.string()).status().code(), StatusCode::kIndexMismatch);
}

TEST_F(CheckpointTest, PipelineFolder) {
  WriteFile(dir_ / "model_index.json",
            R"({"_class_name":"StableDiffusionPipeline","_diffusers_version":"0.42.1",)"
            R"("unet":["diffusers","UNet2DConditionModel"],)"
            R"("text_encoder":["transformers","CLIPTextModel"],)"
            R"("scheduler":["diffusers","DDPMScheduler"],"safety_checker":[null,null]})");
  WriteFile(dir_ / "unet" / "config.json", R"({"_class_name":"UNet2DConditionModel"})");
  WriteFile(dir_ / "unet" / "diffusion_pytorch_model.safetensors", Shard("conv_in.weight"));
  WriteFile(dir_ / "text_encoder" / "model.safetensors", Shard("emb"));
  WriteFile(dir_ / "scheduler" / "scheduler_config.json", "{}");
  auto ck = Checkpoint::Open(dir_.string());
  ASSERT_TRUE(ck.ok()) << ck.status().ToString();
  EXPECT_EQ((*ck)->layout(), CheckpointLayout::kPipeline);
  ASSERT_EQ((*ck)->components().size(), 2u);
  EXPECT_NE((*ck)->Find("unet/conv_in.weight"), nullptr);
  EXPECT_NE((*ck)->Find("text_encoder/emb"), nullptr);
  EXPECT_EQ((*ck)->Find("unet/conv_in.weight")->component, "unet");
  for (const auto& c : (*ck)->components()) {
    if (c.name == "unet") {
      EXPECT_EQ(c.class_name, "UNet2DConditionModel");
      EXPECT_NE(c.config_json.find("UNet2D"), std::string::npos);
    }
  }
}

TEST_F(CheckpointTest, PipelineComponentEscape) {
  WriteFile(dir_ / "p" / "model_index.json", R"({"..":["diffusers","UNet2DModel"]})");
  EXPECT_EQ(Checkpoint::Open((dir_ / "p").string()).status().code(), StatusCode::kPathEscape);
  WriteFile(dir_ / "q" / "model_index.json", R"({"unet":["diffusers","UNet2DModel"]})");
  EXPECT_EQ(Checkpoint::Open((dir_ / "q").string()).status().code(), StatusCode::kNotAModel);
}

TEST_F(CheckpointTest, AmbiguousAndMissing) {
  WriteFile(dir_ / "a.safetensors", Shard("a"));
  WriteFile(dir_ / "b.safetensors", Shard("b"));
  auto ck = Checkpoint::Open(dir_.string());
  EXPECT_EQ(ck.status().code(), StatusCode::kAmbiguousLayout);
  EXPECT_NE(ck.status().message().find("a.safetensors, b.safetensors"), std::string::npos);
  EXPECT_EQ(Checkpoint::Open((dir_ / "missing").string()).status().code(), StatusCode::kNotFound);
  fs::create_directories(dir_ / "emptydir");
  EXPECT_EQ(Checkpoint::Open((dir_ / "emptydir").string()).status().code(), StatusCode::kNotAModel);
}

TEST_F(CheckpointTest, PickleFilesAreRefusedByName) {
  WriteFile(dir_ / "model.ckpt", std::string("\x80\x02}q\x00.", 6));
  WriteFile(dir_ / "model.pt", std::string("PK\x03\x04rest-of-zip", 16));
  for (const char* f : {"model.ckpt", "model.pt"}) {
    auto ck = Checkpoint::Open((dir_ / f).string());
    EXPECT_EQ(ck.status().code(), StatusCode::kUnsupported) << f;
    EXPECT_NE(ck.status().message().find("pickle"), std::string::npos) << ck.status().ToString();
  }
}

}  // namespace
}  // namespace arrowquant
