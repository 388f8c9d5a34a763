"""Diffusers names -> the original (CompVis/LDM) single-file names that stable-diffusion.cpp
and A1111-style tools read, for Stable Diffusion's UNet2DConditionModel (SD 1.x/2.x/XL layouts,
from the component's config), AutoencoderKL and an SD 1.x CLIP text encoder. The inverse of
diffusers' own single-file conversion (diffusers.loaders.single_file_utils), which the tests use
to check every name."""

from __future__ import annotations

from typing import Any

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
PREFIXES = (UNET_PREFIX, VAE_PREFIX, "cond_stage_model.", "conditioner.embedders.")

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _unet_prefixes(config: dict[str, Any]) -> tuple[dict[str, str], set[str]]:
    """diffusers block prefix -> LDM prefix; and which of them are resnets."""
    m = {
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "conv_in.": "input_blocks.0.0.",
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
        "mid_block.attentions.0.": "middle_block.1.",
    }
    resnets = set()
    n = len(config["block_out_channels"])
    per = config["layers_per_block"]
    per = per if isinstance(per, int) else per[0]
    down, up = config["down_block_types"], config["up_block_types"]
    for i in range(n):
        for j in range(per):
            k = (per + 1) * i + j + 1
            m[f"down_blocks.{i}.resnets.{j}."] = f"input_blocks.{k}.0."
            resnets.add(f"down_blocks.{i}.resnets.{j}.")
            if "CrossAttn" in down[i]:
                m[f"down_blocks.{i}.attentions.{j}."] = f"input_blocks.{k}.1."
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv."] = f"input_blocks.{(per + 1) * (i + 1)}.0.op."
        for j in range(per + 1):
            k = (per + 1) * i + j
            m[f"up_blocks.{i}.resnets.{j}."] = f"output_blocks.{k}.0."
            resnets.add(f"up_blocks.{i}.resnets.{j}.")
            if "CrossAttn" in up[i]:
                m[f"up_blocks.{i}.attentions.{j}."] = f"output_blocks.{k}.1."
        if i < n - 1:
            at = 2 if "CrossAttn" in up[i] else 1
            m[f"up_blocks.{i}.upsamplers.0."] = f"output_blocks.{(per + 1) * i + per}.{at}."
    for j in range(2):
        m[f"mid_block.resnets.{j}."] = f"middle_block.{2 * j}."
        resnets.add(f"mid_block.resnets.{j}.")
    return m, resnets


def _mapped(name: str, prefixes: dict[str, str], inner: dict[str, str], apply: set[str]) -> str:
    for src in sorted(prefixes, key=len, reverse=True):
        if name.startswith(src):
            rest = name[len(src) :]
            if src in apply:
                for a, b in inner.items():
                    if rest.startswith(a + "."):
                        rest = b + rest[len(a) :]
                        break
            return prefixes[src] + rest
    raise KeyError(name)


def unet(names: list[str], config: dict[str, Any]) -> dict[str, str]:
    """UNet2DConditionModel names -> LDM names (with UNET_PREFIX)."""
    prefixes, resnets = _unet_prefixes(config)
    out = {}
    for n in names:
        try:
            out[n] = UNET_PREFIX + _mapped(n, prefixes, _UNET_RESNET, resnets)
        except KeyError:
            raise ValueError(f"no LDM name for UNet tensor '{n}'") from None
    return out


def vae(names: list[str], config: dict[str, Any]) -> dict[str, str]:
    """AutoencoderKL names -> LDM names (with VAE_PREFIX)."""
    n = len(config["block_out_channels"])
    per = config.get("layers_per_block", 2)
    m = {
        "encoder.conv_norm_out.": "encoder.norm_out.",
        "decoder.conv_norm_out.": "decoder.norm_out.",
        "encoder.conv_in.": "encoder.conv_in.",
        "encoder.conv_out.": "encoder.conv_out.",
        "decoder.conv_in.": "decoder.conv_in.",
        "decoder.conv_out.": "decoder.conv_out.",
        "quant_conv.": "quant_conv.",
        "post_quant_conv.": "post_quant_conv.",
    }
    resnets, attentions = set(), set()
    for i in range(n):
        for j in range(per):
            m[f"encoder.down_blocks.{i}.resnets.{j}."] = f"encoder.down.{i}.block.{j}."
            resnets.add(f"encoder.down_blocks.{i}.resnets.{j}.")
        m[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = f"encoder.down.{i}.downsample.conv."
        for j in range(per + 1):
            m[f"decoder.up_blocks.{i}.resnets.{j}."] = f"decoder.up.{n - 1 - i}.block.{j}."
            resnets.add(f"decoder.up_blocks.{i}.resnets.{j}.")
        m[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = f"decoder.up.{n - 1 - i}.upsample.conv."
    for side in ("encoder", "decoder"):
        for j in range(2):
            m[f"{side}.mid_block.resnets.{j}."] = f"{side}.mid.block_{j + 1}."
            resnets.add(f"{side}.mid_block.resnets.{j}.")
        m[f"{side}.mid_block.attentions.0."] = f"{side}.mid.attn_1."
        attentions.add(f"{side}.mid_block.attentions.0.")
    out = {}
    for name in names:
        try:
            src = next(p for p in sorted(m, key=len, reverse=True) if name.startswith(p))
        except StopIteration:
            raise ValueError(f"no LDM name for VAE tensor '{name}'") from None
        inner = _VAE_ATTENTION if src in attentions else _VAE_RESNET
        out[name] = VAE_PREFIX + _mapped(name, {src: m[src]}, inner, resnets | attentions)
    return out


def vae_shape(ldm_name: str, shape: list[int]) -> list[int]:
    """The LDM VAE's mid-block attention projections are 1x1 convolutions, diffusers' Linear."""
    if ".mid.attn_1." in ldm_name and ldm_name.endswith(".weight") and len(shape) == 2:
        return [*shape, 1, 1]
    return shape


def clip(names: list[str]) -> dict[str, str]:
    """SD 1.x CLIPTextModel names -> LDM names (cond_stage_model.transformer.text_model.*;
    transformers 5 saves the text model's tensors without the text_model. prefix)."""
    return {
        n: CLIP_PREFIX + (n if n.startswith("text_model.") else "text_model." + n) for n in names
    }


# The component classes with original (LDM) names, and their mapping.
CLASSES = ("UNet2DConditionModel", "AutoencoderKL", "CLIPTextModel")


def for_class(class_name: str, names: list[str], config: dict[str, Any]) -> dict[str, str] | None:
    """Diffusers names -> LDM names for a component of `class_name` (None: no mapping known)."""
    if class_name == "UNet2DConditionModel":
        return unet(names, config)
    if class_name == "AutoencoderKL":
        return vae(names, config)
    if class_name == "CLIPTextModel":
        return clip(names)
    return None
