"""The quantize job as Ray tasks (arrowquant.scale_out) against the same job in one process, in
the same script, on the SD1.5-shaped f16 UNet checkpoint (bench/pipeline_rss.py; 1.72 GB): a
local Ray cluster of --cpus CPUs on this machine, the default job (weight-only for a lone UNet
file, profile local). --rounds rounds, each: the one-process run before a cluster exists, then
a fresh local cluster (its workers start and import arrowquant in the first Ray run, as for
each `arrowquant quantize --ray`) with the Ray run reading storage, the one-process run beside
the idle cluster, the Ray run again (workers started), and the Ray run with tensors and part
files through the object store (--ray-transfer object-store: nodes without shared storage).
Reports every run's wall time, the rounds' paired ratios (median, range), whether the model
files are identical (creation time aside), and the fastest Ray runs' phases (size budget on
the driver, tasks with the merge appending parts as they come in, close), parts, part-file
bytes, bytes sent and the workers' peak RSS. With --shards K the checkpoint is first cut into
K shards and an index (as `save_pretrained` writes big models), and every run reads the index.
--max-file-size SIZE: every run writes a Parquet dataset.

    .venv/bin/python bench/scale_out.py [--dir bench-out] [--rounds 3] [--cpus 2] [--shards K]
        [--max-file-size SIZE]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_rss import build  # noqa: E402  (the SD1.5-shaped checkpoint)

CREATED = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def sharded(single: Path, k: int) -> Path:
    """`single` cut into k shards of about equal bytes (tensor order kept) and their index."""
    import safetensors.numpy

    folder = single.parent / f"{single.stem}_{k}shards"
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.exists():
        return index
    folder.mkdir(parents=True, exist_ok=True)
    tensors = safetensors.numpy.load_file(str(single))
    total = sum(t.nbytes for t in tensors.values())
    weight_map: dict[str, str] = {}
    shard: dict[str, Any] = {}
    acc, i = 0, 0
    names = list(tensors)
    for j, name in enumerate(names):
        shard[name] = tensors[name]
        acc += tensors[name].nbytes
        if acc * k >= total * (i + 1) or j == len(names) - 1:
            file = f"diffusion_pytorch_model-{i + 1:05d}-of-{k:05d}.safetensors"
            safetensors.numpy.save_file(shard, str(folder / file))
            weight_map |= dict.fromkeys(shard, file)
            shard, i = {}, i + 1
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    return index


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("bench-out"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--shards", type=int, default=0, help="cut the checkpoint into K shards")
    ap.add_argument("--max-file-size", default="", help="write Parquet datasets (e.g. 200MB)")
    args = ap.parse_args()
    import ray

    import arrowquant as aq

    args.dir.mkdir(parents=True, exist_ok=True)
    ckpt = args.dir / "sd15_f16.safetensors"
    build(ckpt, "f16")
    model = sharded(ckpt, args.shards) if args.shards else ckpt
    modes = ("alone", "local", "ray", "warm", "ship")
    times: dict[str, list[float]] = {m: [] for m in modes}
    phases: dict[str, Any] = {}

    def run(mode: str) -> None:
        out = args.dir / f"scale_out_{'local' if mode == 'alone' else mode}"
        shutil.rmtree(out, ignore_errors=True)
        cfg = aq.DiffusionQuantConfig(
            ray="default" if mode in ("ray", "warm", "ship") else "",
            ray_transfer="object-store" if mode == "ship" else "storage",
            max_file_size=args.max_file_size,
        )
        t = time.perf_counter()
        rep = aq.ArrowQuantV2().quantize_diffusion_model(model, out, cfg)
        times[mode].append(time.perf_counter() - t)
        if mode in ("warm", "ship") and times[mode][-1] == min(times[mode]):
            phases[mode] = rep.extra["scale_out"]

    starts = []
    for _ in range(args.rounds):
        run("alone")  # before the cluster exists: its idle processes take CPU too
        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        starts.append(time.perf_counter() - t)
        # A fresh cluster each round: its workers start and import arrowquant in the first
        # Ray run, as they do for each `arrowquant quantize --ray` with a local cluster.
        for mode in ("ray", "local", "warm", "ship"):
            run(mode)
        ray.shutdown()

    def content(m: str) -> list[bytes]:  # the model file, or a dataset's files
        p = args.dir / f"scale_out_{m}" / "model.aq.parquet"
        files = sorted(p.iterdir()) if p.is_dir() else [p]
        return [CREATED.sub(b"", f.read_bytes()) for f in files]

    files = [content(m) for m in ("local", "warm", "ship")]
    same = files[0] == files[1] == files[2]

    def ratio(a: str, b: str) -> str:  # the rounds' paired ratios: median (min-max)
        r = sorted(x / y for x, y in zip(times[a], times[b], strict=True))
        return f"{statistics.median(r):.2f}x ({r[0]:.2f}-{r[-1]:.2f})"

    def secs(m: str) -> str:
        return " / ".join(f"{x:.2f}" for x in times[m]) + " s"

    gb = ckpt.stat().st_size / 1e9
    how = f", {args.shards} shards and an index" if args.shards else ""
    print(f"SD1.5-shaped f16 UNet ({gb:.2f} GB{how}), default job, {args.rounds} rounds")
    print(f"  one process, no Ray running: {secs('alone')}")
    print(f"  one process, the Ray cluster idle beside it: {secs('local')}")
    print(
        f"  Ray, a fresh local cluster of {args.cpus} CPUs each round (its start, "
        f"{min(starts):.1f}-{max(starts):.1f} s, not counted), its workers' first job: "
        f"{secs('ray')}: {ratio('ray', 'alone')} the first, {ratio('ray', 'local')} the second"
    )
    print(
        f"  Ray again, the workers started: {secs('warm')}: {ratio('warm', 'alone')} the first, "
        f"{ratio('warm', 'local')} the second"
    )
    print(
        f"  Ray, tensors and part files through the object store: {secs('ship')}: "
        f"{ratio('ship', 'alone')} the first, {ratio('ship', 'warm')} reading from storage; "
        f"{phases['ship']['checkpoint_bytes_shipped'] / 1e9:.2f} GB sent"
    )
    dataset = f", a dataset of {len(files[0])} files" if args.max_file_size else ""
    print(f"  model files identical (creation time aside{dataset}): {same}")
    for mode in ("warm", "ship"):
        print(f"  {mode} run (fastest): {json.dumps(phases[mode])}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
