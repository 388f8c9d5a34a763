"""The whole `arrowquant quantize` job on SD1.5-shaped UNet checkpoints (f16 and f32), every
profile and `--method minmax`, against reading the same file (`cat FILE > /dev/null`) and a
memcpy of the same bytes measured in the same run. Warm page cache; wall time, input GB/s, peak
RSS (/usr/bin/time -v) and the weight error the job reports (rel-RMSE weighted by parameters),
so a speed change that costs error shows up in the same table.

    .venv/bin/python bench/pipeline_speed.py [--dir bench-out] [--threads 2] [--repeat 1]
        [--dtypes f16,f32,f16-ldm] [--jobs local,cloud,edge,local-minmax,gguf-q4k]

`f16-ldm`: the f16 checkpoint's tensors under original single-file (LDM) names.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_rss import build  # noqa: E402  (the same SD1.5-shaped checkpoint)

JOBS = {
    "local": ["--profile", "local"],
    "cloud": ["--profile", "cloud"],
    "edge": ["--profile", "edge"],
    "compact": ["--profile", "compact"],
    "local-minmax": ["--profile", "local", "--method", "minmax"],
    # GGUF for stable-diffusion.cpp / ComfyUI-GGUF (docs/interop.md): Q4_K, 3x3 convs F16.
    "gguf-q4k": ["--format", "gguf", "--gguf-type", "Q4_K"],
}


def build_ldm(src: Path, dst: Path) -> None:
    """src's UNet under the names an original single file has (model.diffusion_model.*,
    arrowquant.ldm_names), if absent."""
    if dst.exists():
        return
    import safetensors.numpy
    from sd15_shapes import SD15_UNET

    from arrowquant import ldm_names

    tensors = safetensors.numpy.load_file(str(src))
    mapping = ldm_names.unet(list(tensors), dict(SD15_UNET))
    safetensors.numpy.save_file({mapping[k]: v for k, v in tensors.items()}, str(dst))


def cat_seconds(path: Path, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(f"cat '{path}' > /dev/null", shell=True, check=True)
        best = min(best, time.perf_counter() - t)
    return best


def memcpy_seconds(path: Path, repeat: int) -> float:
    """One copy of the file's bytes (page cache -> private buffer), as numpy does it."""
    src = np.memmap(path, dtype=np.uint8, mode="r")
    dst = np.empty_like(src)
    dst[:] = src  # fault both in first
    best = math.inf
    for _ in range(max(repeat, 2)):
        t = time.perf_counter()
        dst[:] = src
        best = min(best, time.perf_counter() - t)
    del src
    return best


def weighted_rel_rmse(report: dict) -> float:
    """sqrt(sum(rel^2 * params) / sum(params)) over the quantized layers."""
    num = den = 0.0
    for layer in report["layers"]:
        m = layer.get("metrics") or {}
        rel = m.get("rel_rmse")
        if rel is None or layer.get("action") != "quantized":
            continue
        n = math.prod(layer.get("shape") or [1])
        num += rel * rel * n
        den += n
    return math.sqrt(num / den) if den else float("nan")


def run_job(ckpt: Path, out: Path, flags: list[str], threads: int) -> dict:
    cli = Path(sys.executable).with_name("arrowquant")
    cmd = ["/usr/bin/time", "-v", str(cli), "quantize", str(ckpt), str(out), *flags]
    cmd += ["--threads", str(threads), "--overwrite", "--no-calibration"]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    assert rss, r.stderr
    report = json.loads((out / "report.json").read_text())
    return {
        "wall": wall,
        "rss": int(rss.group(1)) * 1024,
        "error": weighted_rel_rmse(report),
        "bpw": report["summary"]["bits_per_weight"],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, default=Path("bench-out"))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=1, help="best of N for each job")
    ap.add_argument("--dtypes", default="f16,f32")
    ap.add_argument("--jobs", default="local,cloud,edge,local-minmax")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"threads: {args.threads}; warm page cache; best of {args.repeat}")
    hdr = (
        f"{'input':7} {'job':13} {'wall s':>7} {'GB/s in':>8} {'x cat':>7} {'x memcpy':>8} "
        f"{'peak RSS':>9} {'RSS cap':>8} {'bits/w':>7} {'rel-RMSE':>9}"
    )
    for dtype in args.dtypes.split(","):
        ckpt = args.dir / f"sd15_{dtype}.safetensors"
        if dtype.endswith("-ldm"):  # the same tensors under original (LDM) single-file names
            largest = build(args.dir / f"sd15_{dtype[:-4]}.safetensors", dtype[:-4])
            build_ldm(args.dir / f"sd15_{dtype[:-4]}.safetensors", ckpt)
        else:
            largest = build(ckpt, dtype)
        size = ckpt.stat().st_size
        cat_s = cat_seconds(ckpt, 3)
        copy_s = memcpy_seconds(ckpt, 3)
        cap = 2**30 + 2 * largest
        print(
            f"\n{ckpt.name}: {size / 1e9:.3f} GB; cat {cat_s:.3f} s "
            f"({size / cat_s / 1e9:.1f} GB/s), memcpy {copy_s:.3f} s "
            f"({size / copy_s / 1e9:.1f} GB/s)"
        )
        print(hdr)
        for job in args.jobs.split(","):
            out = args.dir / f"speed_{dtype}_{job}"
            best: dict | None = None
            for _ in range(args.repeat):
                r = run_job(ckpt, out, JOBS[job], args.threads)
                if best is None or r["wall"] < best["wall"]:
                    best = r
            assert best is not None
            shutil.rmtree(out, ignore_errors=True)
            row = {"input": dtype, "job": job, "bytes": size, "cat_s": cat_s, "memcpy_s": copy_s}
            row.update(best)
            rows.append(row)
            print(
                f"{dtype:7} {job:13} {best['wall']:7.2f} {size / best['wall'] / 1e9:8.3f} "
                f"{best['wall'] / cat_s:7.1f} {best['wall'] / copy_s:8.1f} "
                f"{best['rss'] / 2**30:7.2f}Gi {cap / 2**30:6.2f}Gi {best['bpw']:7.3f} "
                f"{best['error']:9.5f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
