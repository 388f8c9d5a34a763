"""`make demo`: builds a small diffusers pipeline, saves it sharded, reads it back, quantizes
its UNet at 8, 4 and 2 bits into model files, loads each back into a diffusers UNet and compares
the denoiser's output with the original's on the same noisy inputs.

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
    src_bytes = sum(v.numel() * 2 for v in unet.state_dict().values())  # as f16
    print("\nquantize the UNet (linear and conv weights; biases and norms stay f16), reload, run:")
    print(
        f"{'setting':<28} {'bits/weight':>11} {'file MiB':>9} {'vs f16':>7} "
        f"{'weight relRMSE':>15} {'output relRMSE':>15} {'time s':>7}"
    )
    for bits in (8, 4, 2):
        t0 = time.perf_counter()
        tensors: dict[str, object] = {}
        errs = []
        for name in ck.names():  # type: ignore[attr-defined]
            key = name.removeprefix("unet/")
            w = ck.numpy(name)  # type: ignore[attr-defined]
            if w.ndim >= 2 and w.size >= 256:
                q = aq.quantize(w, bits=bits, name=key)
                errs.append(q.error(w)["rel_rmse"])
                tensors[key] = q
            else:
                tensors[key] = w.astype("float16")
        path = out / f"ddpm-tiny-int{bits}.aq.parquet"
        aq.save(path, tensors, recipe={"bits": bits, "default_format": True}, modality="image")
        params = {k: v.clone() for k, v in unet.state_dict().items()}
        model = type(unet).from_config(unet.config)
        aq.load_state_dict(path, dtype=torch.float32, out=params)
        model.load_state_dict(params)
        with torch.no_grad():
            got = model(x, t).sample
        dt = time.perf_counter() - t0
        rel = float(((got - ref).pow(2).sum() / ref.pow(2).sum()).sqrt())
        size = path.stat().st_size
        bpw = (
            8
            * sum(q.nbytes for q in tensors.values() if isinstance(q, aq.QuantizedTensor))
            / sum(
                q.shape[0] * int(torch.tensor(q.shape[1:]).prod())
                for q in tensors.values()
                if isinstance(q, aq.QuantizedTensor)
            )
        )
        label = (
            aq.open(path)
            .tensor(next(k for k, v in tensors.items() if isinstance(v, aq.QuantizedTensor)))
            .metadata["format"]
        )
        print(
            f"{label:<28} {bpw:>11.3f} {size / 2**20:>9.2f} {size / src_bytes:>7.1%} "
            f"{sum(errs) / len(errs):>15.4f} {rel:>15.4f} {dt:>7.2f}"
        )
    print(f"\nmodel files in {out}/ (open them with arrowquant.open, pyarrow, DuckDB or Polars)")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo-out"))
