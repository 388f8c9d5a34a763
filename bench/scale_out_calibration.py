"""Calibration's batches on Ray workers (arrowquant.scale_out.CalibrationPool) against the same
capture in one process, in the same script, on the bundled reference models: the FP model
samples --samples trajectories of --steps DDIM steps in batches of --batch, recording activation
statistics, GPTQ's second moments and the call sample (the default calibrated job's capture).
Reports each run's wall time (best of --repeat), their ratio, whether the merged records are
identical (Ray on 1 worker and on --cpus workers; the one-process record at 1 torch thread and at
--cpus), and the per-batch costs the scale-out model in docs/scale-out.md uses: seconds per
batch on one worker, bytes of a batch's record (what travels to the driver), the driver's merge
seconds per batch, and the workers' start (loading the model).

    .venv/bin/python bench/scale_out_calibration.py [--cpus 2] [--samples 32] [--batch 8]
"""

from __future__ import annotations

import argparse
import math
import pickle
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--models", default="digits-dit,digits-ddpm")
    args = ap.parse_args()
    import ray
    import torch

    from arrowquant import scale_out
    from arrowquant.calibration import capture, load_calibration
    from arrowquant.calibration.capture import CaptureSpec, record_batch
    from arrowquant.calibration.sensitivity import replay_budget
    from arrowquant.diffusion import load_reference

    calib = load_calibration("synthetic", args.samples)
    batches = math.ceil(args.samples / args.batch)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ok = True
    for name in args.models.split(","):
        path = str(ROOT / "models" / name)
        ref = load_reference(path)

        def run(pool: Any, ref: Any = ref) -> tuple[float, tuple[Any, ...]]:
            moments: dict[str, Any] = {}
            calls: list[Any] = []
            t = time.perf_counter()
            stats = capture(
                ref,
                calib,
                args.steps,
                0,
                batch=args.batch,
                moments=moments,
                recorded_calls=calls,
                threads=args.cpus,
                pool=pool,
            )
            return time.perf_counter() - t, (stats, moments, calls)

        torch.set_num_threads(args.cpus)
        local = min(run(None)[0] for _ in range(args.repeat))
        _, a = run(None)
        torch.set_num_threads(1)
        _, a1 = run(None)
        on_ray = math.inf
        with scale_out.calibration_pool(path, "default", batches, 1) as pool:
            _, c = run(pool)
        with scale_out.calibration_pool(path, "default", batches) as pool:
            t = time.perf_counter()
            _, b = run(pool)  # the first run starts the workers (each loads the model)
            first = time.perf_counter() - t
            for _ in range(args.repeat):
                on_ray = min(on_ray, run(pool)[0])
            workers = pool.workers if pool is not None else 0
            rss = pool.peak_rss if pool is not None else 0
        same = _same(c, b) and _same(a1, b)
        ok &= same
        # One batch on one thread, its record's size, and the driver's merge of it.
        torch.set_num_threads(1)
        spec = CaptureSpec(args.steps, 0, None, args.batch, 512, False, True, True, 1, 0)
        t = time.perf_counter()
        rec = record_batch(ref, calib, spec, 1)
        per_batch = time.perf_counter() - t
        size = len(pickle.dumps(rec))
        into = record_batch(ref, calib, spec, 0)
        t = time.perf_counter()
        into.merge(rec, 512, replay_budget(ref.module)[0], random.Random(1))
        merge = time.perf_counter() - t
        params = sum(p.numel() for p in ref.module.parameters())
        print(
            f"{name} ({params / 1e6:.1f} M params): {args.samples} trajectories x {args.steps} "
            f"steps in {batches} batches of {args.batch}, best of {args.repeat}"
        )
        print(f"  one process ({args.cpus} threads): {local:.2f} s")
        print(
            f"  Ray, {workers} workers of 1 CPU: {on_ray:.2f} s ({on_ray / local:.2f}x; the "
            f"first run {first:.2f} s, with the workers loading the model); the workers' peak "
            f"RSS {rss / 2**30:.2f} GiB"
        )
        print(
            f"  merged records identical: Ray 1 worker = {workers} workers = one process at 1 "
            f"thread: {same}; = one process at {args.cpus} threads: {_same(a, b)}"
        )
        print(
            f"  a batch on one thread: {per_batch:.2f} s; its record {size / 2**20:.2f} MiB; "
            f"merged on the driver in {merge * 1e3:.1f} ms"
        )
    ray.shutdown()
    return 0 if ok else 1


def _same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    sa, ma, ca = a
    sb, mb, cb = b
    if list(sa) != list(sb) or list(ma) != list(mb) or repr(ca) != repr(cb):
        return False
    for k in sa:
        for x, y in zip(sa[k].stats(), sb[k].stats(), strict=True):
            if not all(np.array_equal(x[f], y[f]) for f in x):
                return False
    return all(
        np.array_equal(h.data(), g.data()) for k in ma for h, g in zip(ma[k], mb[k], strict=True)
    )


if __name__ == "__main__":
    raise SystemExit(main())
