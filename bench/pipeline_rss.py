"""`arrowquant quantize` on a >= 3 GB f32 checkpoint with SD1.5's UNet shapes: wall time and peak
RSS from /usr/bin/time -v, against the target RSS <= 1 GB + 2x the largest tensor.

    .venv/bin/python bench/pipeline_rss.py [--dir bench-out] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import safetensors.numpy

SHAPES = Path(__file__).with_name("sd15_unet_shapes.txt")


def build(path: Path, dtype: str = "f32") -> int:
    """Writes the SD1.5-shaped checkpoint (N(0, 0.02) weights, f32 or f16) if absent; returns
    its largest tensor's bytes."""
    np_dtype = np.float16 if dtype == "f16" else np.float32
    rng = np.random.default_rng(0)
    tensors = {}
    largest = 0
    for line in SHAPES.read_text().splitlines():
        name, *dims = line.split()
        shape = tuple(int(d) for d in dims)
        largest = max(largest, int(np.prod(shape)) * np.dtype(np_dtype).itemsize)
        if not path.exists():
            w = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            tensors[name] = w.astype(np_dtype)
    if tensors:
        safetensors.numpy.save_file(tensors, path)
    return largest


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("bench-out"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--profile", default="local")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    ckpt = args.dir / "sd15_f32.safetensors"
    largest = build(ckpt)
    out = args.dir / "sd15_quantized"
    shutil.rmtree(out, ignore_errors=True)
    cli = Path(sys.executable).with_name("arrowquant")
    cmd = [
        "/usr/bin/time",
        "-v",
        str(cli),
        "quantize",
        str(ckpt),
        str(out),
        "--profile",
        args.profile,
        "--threads",
        str(args.threads),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr)
        return r.returncode
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    elapsed = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", r.stderr)
    assert rss and elapsed, r.stderr
    rss_kb, wall = int(rss.group(1)), elapsed.group(1)
    target = 2**30 + 2 * largest
    print(r.stdout.strip())
    size_gb, largest_mib = ckpt.stat().st_size / 1e9, largest / 2**20
    print(f"checkpoint: {size_gb:.2f} GB f32, largest tensor {largest_mib:.0f} MiB")
    verdict = "met" if rss_kb * 1024 <= target else "MISSED"
    print(f"profile {args.profile}, {args.threads} threads: wall {wall}, ")
    print(f"peak RSS {rss_kb / 2**20:.2f} GiB (target <= {target / 2**30:.2f} GiB: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
