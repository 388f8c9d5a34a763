"""Small diffusers / transformers models built in-process for reader tests (no downloads)."""

from __future__ import annotations

import torch


def tiny_unet() -> torch.nn.Module:
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=16,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,
    )


def tiny_clip_text() -> torch.nn.Module:
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    cfg = CLIPTextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
    )
    return CLIPTextModel(cfg)


def sd_models(layout: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(UNet2DConditionModel, AutoencoderKL) of a Stable Diffusion layout: "sd15" (SD1.5's
    block structure, small widths), "sdxl" (SDXL's: two attention levels with 1-3 transformer
    layers, text-time embedding) or "digits-t2i" (the bundled model)."""
    import sys
    from pathlib import Path

    from diffusers import AutoencoderKL, UNet2DConditionModel

    root = Path(__file__).resolve().parents[2]
    if layout == "digits-t2i":
        return (
            UNet2DConditionModel.from_pretrained(root / "models" / layout, subfolder="unet"),
            AutoencoderKL.from_pretrained(root / "models" / layout, subfolder="vae"),
        )
    sys.path.insert(0, str(root / "bench"))
    from sd15_shapes import SD15_UNET

    cfg: dict[str, object] = dict(SD15_UNET)
    if layout == "sdxl":
        cfg.update(
            block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 3),
            attention_head_dim=(2, 4, 4),
            use_linear_projection=True,
            cross_attention_dim=64,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=80,
            norm_num_groups=16,
        )
    else:
        cfg.update(block_out_channels=(32, 64, 64, 64), cross_attention_dim=64, norm_num_groups=16)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg)  # type: ignore[arg-type]
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
    )
    return unet, vae
