"""Scale-out on Ray: a job's tensors as Ray tasks (docs/scale-out.md).

The driver builds the job's pipeline config, assigns its size budgets once (they weigh every
layer against every other), and cuts the checkpoint's tensors into contiguous parts of about
equal source bytes. Each part is a Ray task: it memory-maps the checkpoint from storage every
worker sees, builds the same config from the job's inputs (api.CoreInputs, shipped once through
the object store), runs the C++ pipeline on its tensors and writes a part file in the output's
temporary folder. The driver appends each part file to the model file as soon as the parts
before it are in (C++ PartMerger), while the later parts still run: the model file a single
process writes, byte for byte but for its creation time.

A task whose worker dies is retried (Ray's max_retries; a part file appears whole or not at
all); a failed job, a cancelled one (progress callback) and Ctrl-C cancel every task, and the
output's temporary folder goes with them: the output is complete or absent, as for a local run.
"""

from __future__ import annotations

import copyreg
import os
import resource
import time
from pathlib import Path
from typing import Any

import arrowquant._core as _core
from arrowquant.errors import ArrowQuantError, CancelledError

# Test hook: "K" or "K:LOG" makes the first attempt of part K die as a killed worker would
# (os._exit), appending a line to LOG first.
FAULT_ENV = "ARROWQUANT_SCALE_OUT_FAULT"
PARTS_PER_CPU = 4  # parts a CPU of the cluster takes on average: stragglers even out
MAX_RETRIES = 3


def _restore_moments(dim: int, block: int, data: Any, count: int) -> Any:
    h = _core.SecondMoments.make(dim, block)
    h.restore(data, count)
    return h


def _reduce_moments(h: Any) -> tuple[Any, tuple[Any, ...]]:
    block = 0 if h.block >= h.dim else h.block  # 0: the full matrix
    return _restore_moments, (h.dim, block, h.data(), h.count)


# GPTQ's second moments travel to the workers with the job's other inputs.
copyreg.pickle(_core.SecondMoments, _reduce_moments)


def parts_of(model_path: str, n: int) -> list[tuple[int, int]]:
    """[begin, end) tensor ranges, in checkpoint order, of about equal source bytes (at most
    `n` of them, one tensor at least each)."""
    from arrowquant.checkpoint import load_checkpoint

    sizes = [i.nbytes for i in load_checkpoint(model_path).infos()]
    n = max(1, min(n, len(sizes)))
    total = sum(sizes)
    out: list[tuple[int, int]] = []
    begin, acc = 0, 0
    for i, b in enumerate(sizes):
        acc += b
        # Close a part where the running sum passes the next equal share of the bytes.
        if acc * n >= total * (len(out) + 1) and len(out) < n - 1 and i + 1 < len(sizes):
            out.append((begin, i + 1))
            begin = i + 1
    out.append((begin, len(sizes)))
    return out


def _run_part(
    model_path: str,
    part_path: str,
    job: Any,
    budget: tuple[dict[str, tuple[int, float]], str],
    part: tuple[int, int],
    limits: tuple[int, int, int, int],
    index: int,
) -> dict[str, Any]:
    """One Ray task: the job's pipeline on tensors [part) into `part_path`."""
    part_k, _, log = os.environ.get(FAULT_ENV, "").partition(":")
    if part_k == str(index):
        marker = Path(part_path + ".fault")
        if not marker.exists():
            marker.touch()
            if log:
                with open(log, "a") as f:
                    f.write(f"{part_path}\n")
            os._exit(1)  # as a killed worker: Ray retries the task
    core = job.core()
    core.set_budget(*budget)
    core.part = part
    core.threads = 1  # one CPU per task; results do not depend on it
    raw = dict(_core.run_pipeline(model_path, part_path, core, None, limits))
    # The worker process's peak so far (workers are reused: every part it ran counts).
    raw["worker_peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return raw


def _init(address: str) -> bool:
    """Connects to (or starts) the cluster; True where this call started it."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(
        address=None if address == "default" else address,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    return True


def run_on_ray(
    model_path: str,
    out_file: Path,
    job: Any,
    progress: Any,
    limits: tuple[int, int, int, int],
) -> dict[str, Any]:
    """`_core.run_pipeline`'s result for the job run as Ray tasks (see the module's doc)."""
    try:
        import ray
    except ImportError:
        from arrowquant.errors import ConfigurationError

        raise ConfigurationError(
            "--ray needs Ray: pip install 'arrowquant[ray]' (or ray)"
        ) from None
    t0 = time.perf_counter()
    started = _init(job.cfg.ray)
    folder = out_file.parent
    pending: list[Any] = []
    try:
        t1 = time.perf_counter()
        core = job.core()
        budget = _core.assign_budgets(model_path, core)
        t2 = time.perf_counter()
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))  # type: ignore[no-untyped-call]
        ranges = parts_of(model_path, cpus * PARTS_PER_CPU)
        task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_run_part)
        job_ref = ray.put(job)
        paths = [str(folder / f"part-{i:05d}.parquet") for i in range(len(ranges))]
        refs = [
            task.remote(model_path, paths[i], job_ref, budget, r, limits, i)
            for i, r in enumerate(ranges)
        ]
        index = {ref: i for i, ref in enumerate(refs)}
        results: list[dict[str, Any] | None] = [None] * len(refs)
        pending = list(refs)
        done, merged, merging, part_bytes = 0, 0, 0.0, 0
        merger = None
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                raw = results[index[ref]] = _get(ray, ref)
                done += sum(int(x["source_bytes"]) for x in raw["layers"])
                last = raw["layers"][-1]["name"] if raw["layers"] else ""
                if progress is not None and progress(done, _total(results, done), last) is False:
                    raise CancelledError(f"{out_file}: cancelled")
            # Every part whose predecessors are in goes in now, while the others still run.
            t = time.perf_counter()
            while merged < len(results) and (head := results[merged]) is not None:
                if merger is None:
                    merger = _core.PartMerger.open(
                        model_path, str(out_file), core, head["modality"]
                    )
                part_bytes += Path(paths[merged]).stat().st_size
                merger.append(paths[merged])
                Path(paths[merged]).unlink()
                merged += 1
            merging += time.perf_counter() - t
        t3 = time.perf_counter()
        assert merger is not None
        merger.close()
        t4 = time.perf_counter()
        out = _combined([r for r in results if r is not None])
        out["scale_out"] = {
            "parts": len(ranges),
            "cluster_cpus": cpus,
            "part_file_bytes": part_bytes,  # written by the tasks, read back by the merge
            "worker_peak_rss": max(int(r["worker_peak_rss"]) for r in results if r),
            "seconds": {
                "connect": round(t1 - t0, 3),
                "budget": round(t2 - t1, 3),
                "tasks_and_merge": round(t3 - t2, 3),
                "merging": round(merging, 3),  # of which appending parts, as they came in
                "close": round(t4 - t3, 3),
            },
        }
        return out
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        for p in folder.glob("part-*.parquet*"):
            p.unlink(missing_ok=True)
        if started:
            ray.shutdown()


def _total(results: list[dict[str, Any] | None], done: int) -> int:
    """Progress's total: the bytes done plus an estimate of the rest (finished parts' mean)."""
    finished = [r for r in results if r is not None]
    if not finished:
        return done
    return max(done, done * len(results) // len(finished))


def _get(ray: Any, ref: Any) -> dict[str, Any]:
    """A task's result; its typed error as the driver's own (exit code 2 for a user's mistake)."""
    try:
        return dict(ray.get(ref))
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, ArrowQuantError):
            raise e.cause from None
        raise


def _combined(raws: list[dict[str, Any]]) -> dict[str, Any]:
    """The parts' reports as one run's."""
    out = dict(raws[0])
    del out["worker_peak_rss"]
    out["layers"] = [x for r in raws for x in r["layers"]]
    for key in ("source_bytes", "stored_bytes", "quantized_params", "total_params"):
        out[key] = sum(int(r[key]) for r in raws)
    out["threshold_missed"] = any(r["threshold_missed"] for r in raws)
    return out
