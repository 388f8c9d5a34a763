"""The quantize job as Ray tasks (arrowquant.scale_out) against the same job in one process, in
the same script, on the SD1.5-shaped f16 UNet checkpoint (bench/pipeline_rss.py; 1.72 GB): a
local Ray cluster of --cpus CPUs on this machine, the default job (weight-only for a lone UNet
file, profile local). Reports each run's wall time (best of --repeat; the one-process run both
before the cluster starts and beside it, idle), their ratios, whether the model files are
identical (creation time aside), and the Ray run's phases (size budget on the driver, tasks with
the merge appending parts as they come in, close), parts, part-file bytes and the workers' peak
RSS.

    .venv/bin/python bench/scale_out.py [--dir bench-out] [--repeat 2] [--cpus 2]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_rss import build  # noqa: E402  (the SD1.5-shaped checkpoint)

CREATED = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("bench-out"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    import ray

    import arrowquant as aq

    args.dir.mkdir(parents=True, exist_ok=True)
    ckpt = args.dir / "sd15_f16.safetensors"
    build(ckpt, "f16")
    best: dict[str, float] = {"alone": math.inf, "local": math.inf, "ray": math.inf}
    phases: dict[str, Any] = {}

    def run(mode: str) -> None:
        nonlocal phases
        out = args.dir / f"scale_out_{'local' if mode == 'alone' else mode}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = aq.DiffusionQuantConfig(ray="default" if mode == "ray" else "")
        t = time.perf_counter()
        rep = aq.ArrowQuantV2().quantize_diffusion_model(ckpt, out, cfg)
        seconds = time.perf_counter() - t
        if seconds < best[mode]:
            best[mode] = seconds
            if mode == "ray":
                phases = rep.extra["scale_out"]

    for _ in range(args.repeat):  # before the cluster exists: its idle processes take CPU too
        run("alone")
    t = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    start = time.perf_counter() - t
    for _ in range(args.repeat):
        for mode in ("local", "ray"):
            run(mode)
    ray.shutdown()
    files = [
        CREATED.sub(b"", (args.dir / f"scale_out_{m}" / "model.aq.parquet").read_bytes())
        for m in ("local", "ray")
    ]
    gb = ckpt.stat().st_size / 1e9
    print(f"SD1.5-shaped f16 UNet ({gb:.2f} GB), default job, best of {args.repeat}")
    print(f"  one process, no Ray running: {best['alone']:.2f} s")
    print(f"  one process, the Ray cluster idle beside it: {best['local']:.2f} s")
    print(
        f"  Ray, local cluster of {args.cpus} CPUs: {best['ray']:.2f} s "
        f"({best['ray'] / best['alone']:.2f}x the first, {best['ray'] / best['local']:.2f}x the "
        f"second; the cluster's start, {start:.1f} s, not counted)"
    )
    print(f"  model files identical (creation time aside): {files[0] == files[1]}")
    print(f"  Ray run: {json.dumps(phases)}")
    return 0 if files[0] == files[1] else 1


if __name__ == "__main__":
    raise SystemExit(main())
