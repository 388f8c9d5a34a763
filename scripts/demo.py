"""`make demo`: builds a small diffusers pipeline, saves it sharded, reads it back, runs the main
job (`ArrowQuantV2().quantize_diffusion_model`, as `arrowquant quantize` does) with the cloud,
local and edge profiles, loads each result back into a diffusers UNet and compares the
denoiser's output with the original's on the same noisy inputs.

The UNet is randomly initialised (seeded): the trained reference models and the sampling
evaluation are still to come (issue 6), so this measures the quantization path, not image
quality.
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
    if not same:
        return 1
    quantize_and_compare(ck, unet, out)
    return rc


def quantize_and_compare(ck: object, unet: torch.nn.Module, out: Path) -> None:
    import arrowquant as aq

    torch.manual_seed(1)
    x = torch.randn(4, 1, 32, 32)
    t = torch.tensor([10, 250, 500, 900])
    with torch.no_grad():
        ref = unet(x, t).sample
    src = out / "ddpm-tiny"
    f16_bytes = sum(v.numel() * 2 for v in unet.state_dict().values())
    print("\narrowquant quantize, one run per profile; each result is loaded back into a diffusers")
    print("UNet and run on the same noisy inputs as the original:")
    print(
        f"{'profile':<8} {'file MiB':>9} {'vs f16':>7} {'bits/weight':>11} {'formats':<72} "
        f"{'output relRMSE':>14} {'time s':>7}"
    )
    for profile in ("cloud", "local", "edge"):
        dest = out / f"ddpm-tiny-{profile}"
        rep = aq.ArrowQuantV2().quantize_diffusion_model(
            src, dest, aq.DiffusionQuantConfig.from_profile(profile), overwrite=True
        )
        params = {f"unet/{k}": v.clone() for k, v in unet.state_dict().items()}
        aq.load_state_dict(dest / "model.aq.parquet", dtype=torch.float32, out=params)
        model = type(unet).from_config(unet.config)
        model.load_state_dict({k.removeprefix("unet/"): v for k, v in params.items()})
        with torch.no_grad():
            got = model(x, t).sample
        rel = float(((got - ref).pow(2).sum() / ref.pow(2).sum()).sqrt())
        s = rep.summary()
        formats = ", ".join(f"{k} x{v}" for k, v in s["formats"].items())
        print(
            f"{profile:<8} {s['file_bytes'] / 2**20:>9.2f} {s['file_bytes'] / f16_bytes:>7.1%} "
            f"{s['bits_per_weight']:>11.3f} {formats:<72} {rel:>14.4f} {s['seconds']:>7.2f}"
        )
    print(f"\nmodel files and reports (report.md, report.png) in {out}/ddpm-tiny-*/")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo-out"))
