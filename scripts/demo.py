"""`make demo`: builds a small diffusers pipeline, saves it sharded, and reads it back.

Until the quantization job lands, the demo shows the reader: the layout it detected and every
tensor's name, dtype, shape and bytes, checked bit-exactly against the model that wrote them.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import torch


def build_pipeline(out: Path) -> torch.nn.Module:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=32,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    )
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.save_pretrained(out, max_shard_size="1MB")
    return unet


def main(out_dir: str) -> int:
    from arrowquant import load_checkpoint
    from arrowquant.cli import main as cli_main

    out = Path(out_dir)
    model_dir = out / "ddpm-tiny"
    shutil.rmtree(model_dir, ignore_errors=True)
    unet = build_pipeline(model_dir)
    print(f"wrote a diffusers DDPM pipeline to {model_dir} (sharded)\n")
    rc = cli_main(["summary", str(model_dir)])

    t0 = time.perf_counter()
    ck = load_checkpoint(str(model_dir))
    same = all(
        ck.raw(f"unet/{k}").tobytes() == v.contiguous().view(torch.uint8).numpy().tobytes()
        for k, v in unet.state_dict().items()
    )
    dt = time.perf_counter() - t0
    print(f"\nread back {len(ck)} tensors in {dt * 1000:.1f} ms; bit-exact with the model: {same}")
    ck.write_tensor_table(str(out / "ddpm-tiny.parquet"))
    print(f"tensor table (Parquet V2 pages, format 2.6): {out / 'ddpm-tiny.parquet'}")
    return rc if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo-out"))
