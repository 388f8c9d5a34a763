"""Writes bench/sd15_unet_shapes.txt: every weight shape of Stable Diffusion 1.5's UNet.

The model is built from its published configuration on PyTorch's meta device (no weights, no
download), so the list is exact. One line per tensor: name, then the dimensions.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=(
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
)


def main() -> None:
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    lines = [f"{n} {' '.join(str(d) for d in p.shape)}" for n, p in unet.state_dict().items()]
    out = Path(__file__).with_name("sd15_unet_shapes.txt")
    out.write_text("\n".join(lines) + "\n")
    total = sum(p.numel() for p in unet.state_dict().values())
    print(f"{out}: {len(lines)} tensors, {total / 1e6:.1f} M parameters")


if __name__ == "__main__":
    main()
