"""load_state_dict speed: an SD1.5-sized INT4 model file to f16 torch tensors, next to
safetensors.torch.load_file of the same model stored as f16, in the same run.

    .venv/bin/python bench/load_speed.py [--dir bench-out] [--threads 2]

Weights: every tensor of Stable Diffusion 1.5's UNet (bench/sd15_unet_shapes.txt), N(0, 0.02);
rank >= 2 tensors quantized with the recommended INT4 format, the rest stored as f16. Both files
are read once before timing (page cache warm); best of 5. GB/s counts the f16 bytes produced.

What is timed is getting the weights into a model: each loader's state dict is copied into
preallocated f16 parameters (what `module.load_state_dict` does). This matters for the baseline:
safetensors.torch.load_file returns tensors that still point into a lazy memory map, so its bytes
are only read during that copy; timing load_file alone would time no reading at all.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import safetensors.numpy
import safetensors.torch

import arrowquant as aq

SHAPES = Path(__file__).with_name("sd15_unet_shapes.txt")


def build(out: Path, threads: int) -> tuple[Path, Path]:
    st_path, aq_path = out / "sd15_f16.safetensors", out / "sd15_int4.parquet"
    if st_path.exists() and aq_path.exists():
        return st_path, aq_path
    rng = np.random.default_rng(0)
    f16: dict[str, np.ndarray] = {}
    tensors: dict[str, object] = {}
    t0 = time.perf_counter()
    for line in SHAPES.read_text().splitlines():
        name, *dims = line.split()
        shape = tuple(int(d) for d in dims)
        w = rng.standard_normal(shape, dtype=np.float32) * 0.02
        f16[name] = w.astype(np.float16)
        tensors[name] = (
            aq.quantize(f16[name], bits=4, threads=threads) if len(shape) >= 2 else f16[name]
        )
    print(f"quantized {len(tensors)} tensors in {time.perf_counter() - t0:.1f} s")
    safetensors.numpy.save_file(f16, st_path)
    aq.save(aq_path, tensors, recipe={"bits": 4})
    return st_path, aq_path


def timed(fn, reps: int = 5) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("bench-out"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    st_path, aq_path = build(args.dir, args.threads)
    import torch

    sd = safetensors.torch.load_file(str(st_path))
    params = {k: torch.empty_like(v) for k, v in sd.items()}  # the "model"
    out_bytes = sum(t.numel() * 2 for t in sd.values())
    del sd

    def into_model(state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            params[k].copy_(v)

    torch.set_num_threads(args.threads)
    into_model(aq.load_state_dict(aq_path, dtype=torch.float16, threads=args.threads))  # warm
    into_model(safetensors.torch.load_file(str(st_path)))
    t_st = timed(lambda: into_model(safetensors.torch.load_file(str(st_path))))
    t_aq = timed(
        lambda: into_model(aq.load_state_dict(aq_path, dtype=torch.float16, threads=args.threads))
    )
    # The same, dequantizing straight into the model's existing parameters (out=...).
    t_aq_into = timed(
        lambda: aq.load_state_dict(aq_path, dtype=torch.float16, threads=args.threads, out=params)
    )
    print(
        f"files: f16 safetensors {st_path.stat().st_size / 1e9:.3f} GB, "
        f"INT4 model {aq_path.stat().st_size / 1e9:.3f} GB "
        f"({st_path.stat().st_size / aq_path.stat().st_size:.2f}x fewer bytes to read)"
    )
    gbs = out_bytes / 1e9
    print(f"safetensors.torch.load_file (f16) + copy:        {gbs / t_st:6.2f} GB/s of f16 output")
    print(f"arrowquant.load_state_dict (INT4 -> f16) + copy: {gbs / t_aq:6.2f} GB/s")
    print(f"arrowquant.load_state_dict(out=params):         {gbs / t_aq_into:6.2f} GB/s")
    print(f"threads: {args.threads}")
    print(
        f"ratio, new tensors + copy: {t_st / t_aq:.2f}; into the parameters: "
        f"{t_st / t_aq_into:.2f} (target >= 0.5)"
    )


if __name__ == "__main__":
    main()
