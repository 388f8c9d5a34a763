"""Cost of building a single file's diffusers pipeline for calibration (arrowquant.single_file),
on an SD1.5-shaped all-in-one original-layout file (UNet, VAE, CLIP ViT-L text encoder; f16,
N(0, 0.02) weights, 2.1 GB), against copying the same file (read + write of the same bytes) in
the same run. Warm page cache; wall time and peak RSS of each, measured in a child process.

    .venv/bin/python bench/single_file_build.py [--dir bench-out] [--repeat 3]

The calibrated job that follows costs as for a pipeline folder (bench/sd15_calibrated.py).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd15_shapes import SD15_UNET  # noqa: E402


def _sd15_modules() -> list[tuple[object, dict[str, str]]]:
    """SD1.5's UNet, VAE and text encoder on the meta device, with their original names."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from arrowquant import ldm_names

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)  # type: ignore[arg-type]
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
        )
        clip = CLIPTextModel(CLIPTextConfig(num_hidden_layers=12, hidden_size=768))
    return [
        (unet, ldm_names.unet(list(unet.state_dict()), dict(unet.config))),
        (vae, ldm_names.vae(list(vae.state_dict()), dict(vae.config))),
        (clip, ldm_names.clip(list(clip.state_dict()))),
    ]


def build(path: Path) -> None:
    """The SD1.5-shaped single file, if absent."""
    if path.exists():
        return
    import safetensors.numpy

    from arrowquant import ldm_names

    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for module, mapping in _sd15_modules():
        for name, p in module.state_dict().items():  # type: ignore[attr-defined]
            shape = ldm_names.vae_shape(mapping[name], list(p.shape))
            w = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            out[mapping[name]] = w.astype(np.float16)
    tmp = path.with_name(path.name + ".tmp")
    safetensors.numpy.save_file(out, str(tmp))
    tmp.rename(path)


def _child(what: str, src: Path) -> dict[str, float]:
    """One measurement in this (child) process: seconds and peak RSS."""
    with tempfile.TemporaryDirectory(dir=src.parent) as d:
        t = time.perf_counter()
        if what == "copy":
            shutil.copyfile(src, Path(d) / src.name)
            extra: dict[str, float] = {}
        else:
            from arrowquant import single_file

            ok, why = single_file.recognise(src)
            assert ok, why
            recognised = time.perf_counter() - t
            with single_file.built(src) as b:
                written = sum(f.stat().st_size for f in b.folder.rglob("*") if f.is_file())
                extra = {"recognise_s": recognised, "written_gb": written / 1e9}
                seconds = time.perf_counter() - t
        if what == "copy":
            seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"seconds": seconds, "peak_rss_gib": peak} | extra


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("bench-out"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", choices=["make", "copy", "build"], help=argparse.SUPPRESS)
    ap.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "make":
        build(args.src)
        return 0
    if args.child:
        print(json.dumps(_child(args.child, args.src)))
        return 0
    args.dir.mkdir(parents=True, exist_ok=True)
    src = args.dir / "sd15_single_file_f16.safetensors"
    # Each step in a child process: a peak RSS is inherited across fork and exec.
    subprocess.run([sys.executable, __file__, "--child", "make", "--src", str(src)], check=True)
    size = src.stat().st_size / 1e9
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.repeat):
        for what in ("copy", "build"):
            r = subprocess.run(
                [sys.executable, __file__, "--child", what, "--src", str(src)],
                capture_output=True,
                text=True,
                check=True,
            )
            got = json.loads(r.stdout.strip().splitlines()[-1])
            if got["seconds"] < best.get(what, {"seconds": math.inf})["seconds"]:
                best[what] = got
    c, b = best["copy"], best["build"]
    print(
        f"SD1.5-shaped single file: {size:.2f} GB f16 (UNet, VAE, CLIP ViT-L), "
        f"best of {args.repeat}"
    )
    print(
        f"  copy of the file (baseline): {c['seconds']:.2f} s, peak RSS {c['peak_rss_gib']:.2f} GiB"
    )
    print(
        f"  pipeline built: {b['seconds']:.2f} s ({b['seconds'] / c['seconds']:.2f}x the copy; "
        f"recognising it {b['recognise_s']:.2f} s), {b['written_gb']:.2f} GB written, "
        f"peak RSS {b['peak_rss_gib']:.2f} GiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
