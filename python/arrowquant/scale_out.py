"""Scale-out on Ray: a job's tensors as Ray tasks (docs/scale-out.md).

The driver builds the job's pipeline config, assigns its size budgets once (they weigh every
layer against every other), and cuts the checkpoint's tensors into contiguous parts of about
equal source bytes. Each part is a Ray task: it memory-maps the checkpoint from storage every
worker sees, builds the same config from the job's inputs (api.CoreInputs, shipped once through
the object store), runs the C++ pipeline on its tensors and writes a part file in the output's
temporary folder. The driver appends each part file to the model file as soon as the parts
before it are in (C++ PartMerger), while the later parts still run: the model file a single
process writes, byte for byte but for its creation time. A Parquet dataset (max_file_size) is
written by tasks instead, a file each (_DatasetFiles). Workers without the driver's storage
(ray_transfer "object-store") get their tensors through the object store (replica.py) and send
their part files back.

A task whose worker dies is retried (Ray's max_retries; a part file appears whole or not at
all); a failed job, a cancelled one (progress callback) and Ctrl-C cancel every task, and the
output's temporary folder goes with them: the output is complete or absent, as for a local run.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

import arrowquant._core as _core
from arrowquant.calibration import recording  # noqa: F401  (the C++ accumulators pickle)
from arrowquant.errors import ArrowQuantError, CancelledError

# Test hook: "K" or "K:LOG" makes the first attempt of part K die as a killed worker would
# (os._exit), appending a line to LOG first; "fK" the same for dataset file K's task; "cK" the
# first calibration batch K of the cluster's life (it needs LOG); "sK" makes part K take 20 s
# longer (a long part); several, comma-separated.
FAULT_ENV = "ARROWQUANT_SCALE_OUT_FAULT"
PARTS_PER_CPU = 4  # parts a CPU of the cluster takes on average: stragglers even out
MAX_RETRIES = 3
SHIPPED_PARTS_PER_CPU = 8  # when tensors go through the object store
SHIPPED_PER_CPU = 2  # parts sent ahead per CPU, then
WAIT_S = 0.2  # the driver's longest wait on the cluster without looking at signals
_owned = False  # whether this process started the cluster it is connected to (session)


def _fault(index: int, prefix: str, marker_of: Any) -> None:
    """The test hook: dies as a killed worker on the first attempt of the chosen task."""
    targets, _, log = os.environ.get(FAULT_ENV, "").partition(":")
    if prefix == "" and f"s{index}" in targets.split(","):
        time.sleep(20)  # a long part, still running when the job is interrupted
    if f"{prefix}{index}" not in targets.split(","):
        return
    marker = Path(marker_of(log))
    if not marker.exists():
        marker.touch()
        if log:
            with open(log, "a") as f:
                f.write(f"{prefix}{index}\n")
        os._exit(1)  # as a killed worker: Ray retries the task


@contextlib.contextmanager
def session(address: str) -> Iterator[None]:
    """Ray connected for the job, unless it already is (then left as it was): to `address`
    ("default": the cluster RAY_ADDRESS names, else a local cluster started here, shut down
    after)."""
    try:
        import ray
    except ImportError:
        from arrowquant.errors import ConfigurationError

        raise ConfigurationError(
            "--ray needs Ray: pip install 'arrowquant[ray]' (or ray)"
        ) from None
    global _owned
    if ray.is_initialized():
        yield
        return
    # "default": the cluster RAY_ADDRESS names, else a local one started for this job (an
    # existing `ray start` cluster is reached with "auto" or its address).
    env = os.environ.get("RAY_ADDRESS", "")
    target = (env or "local") if address == "default" else address
    ray.init(
        address=target,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    _owned = target == "local"
    try:
        yield
    finally:
        _owned = False
        ray.shutdown()


def cluster_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))  # type: ignore[no-untyped-call]


class _Calibrator:
    """A Ray actor holding the FP model: records calibration batches (capture.record_batch)."""

    def __init__(self, path: str, replica: Any = None) -> None:
        import torch

        from arrowquant.diffusion import load_reference

        torch.set_num_threads(1)  # one CPU per actor; results do not depend on it
        self.copy = None
        if replica is not None:  # no shared storage: the model came through the object store
            from arrowquant.replica import Built

            self.copy = Built(replica)
            path = self.copy.path
        self.ref = load_reference(path)

    def close(self) -> None:
        """Removes the model's local copy (an actor killed by ray.kill runs no destructor)."""
        if self.copy is not None:
            self.copy.close()

    def record(self, calib: Any, spec: Any, b: int) -> Any:
        from arrowquant.calibration.capture import record_batch

        _fault(b, "c", lambda log: f"{log}.c{b}")
        rec = record_batch(self.ref, calib, spec, b)
        rec.worker_peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return rec


class CalibrationPool:
    """Calibration batches recorded on Ray actors, one a CPU of the cluster (at most one a
    batch), each holding the FP model loaded from `path` (storage every worker sees), started
    when the first batches are asked for (not at all when calibration comes from the cache).
    Batches go to whichever actor is free and come back in batch order; an actor whose worker
    dies is restarted and its batch retried. Each actor runs torch on one thread: the record
    is the one a process running torch on one thread makes, whatever the number of actors
    (oneDNN's convolutions round differently at other thread counts, docs/scale-out.md)."""

    def __init__(self, path: str, batches: int, workers: int = 0, ship: bool = False) -> None:
        self.path, self.batches, self.max_workers, self.ship = path, batches, workers, ship
        self.actors: list[Any] = []
        self.workers = 0
        self.recorded = 0  # batches recorded on the actors
        self.peak_rss = 0  # the actors' largest peak RSS, bytes

    def record(self, calib: Any, spec: Any, batches: int) -> Iterator[Any]:
        import dataclasses

        import ray
        from ray.util import ActorPool

        if not self.actors:
            actor = ray.remote(num_cpus=1, max_restarts=MAX_RETRIES, max_task_retries=MAX_RETRIES)(
                _Calibrator
            )
            n = min(self.batches, self.max_workers or cluster_cpus())
            replica = None
            if self.ship:  # the whole model, once into the object store, to every actor
                from arrowquant.replica import replica_of

                replica = ray.put(replica_of(self.path, None))
            self.actors = [actor.remote(self.path, replica) for _ in range(n)]
            self.workers = n
        calib_ref = ray.put(calib)
        one = dataclasses.replace(spec, threads=1)
        pool = ActorPool(self.actors)
        records = pool.map(lambda a, b: a.record.remote(calib_ref, one, b), list(range(batches)))
        try:
            for rec in records:
                self.recorded += 1
                self.peak_rss = max(self.peak_rss, rec.worker_peak_rss)
                yield rec
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, ArrowQuantError):  # the user's mistake, as a local run's
                raise e.cause from None
            raise

    def close(self) -> None:
        import ray

        if self.ship and self.actors:
            # Their local copies of the model go first (a dead actor's is left to its node's tmp).
            with contextlib.suppress(Exception):
                ray.get([a.close.remote() for a in self.actors], timeout=60)
        for a in self.actors:
            ray.kill(a)


@contextlib.contextmanager
def calibration_pool(
    path: str, address: str, batches: int, workers: int = 0, ship: bool = False
) -> Iterator[CalibrationPool | None]:
    """A CalibrationPool for a calibration set of `batches` batches (None for one: nothing to
    split), within a Ray session; `workers`: at most that many actors (0: a CPU each); `ship`:
    the model goes to the actors through the object store (workers without shared storage)."""
    if batches <= 1:
        yield None
        return
    with session(address):
        pool = CalibrationPool(path, batches, workers, ship)
        try:
            yield pool
        finally:
            pool.close()


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
    model_path: str | None,
    part_path: str,
    job: Any,
    budget: tuple[dict[str, tuple[int, float]], str],
    part: tuple[int, int],
    limits: tuple[int, int, int, int],
    index: int,
    replica: Any = None,
) -> dict[str, Any]:
    """One Ray task: the job's pipeline on tensors [part) into `part_path`. With `replica`
    (workers without the driver's storage): on a local copy of the part's tensors, the part
    file's bytes returned in "part_file" instead."""
    _fault(index, "", lambda _log: part_path + ".fault")
    core = job.core()
    core.set_budget(*budget)
    core.part = part
    core.threads = 1  # one CPU per task; results do not depend on it
    if replica is None:
        assert model_path is not None
        raw = dict(_core.run_pipeline(model_path, part_path, core, None, limits))
    else:
        from arrowquant.replica import Built

        with Built(replica) as copy:
            local = copy.folder / "part.parquet"
            raw = dict(_core.run_pipeline(copy.path, str(local), core, None, limits))
            raw["part_file"] = np.fromfile(local, np.uint8)  # a view of the store on the driver
    # The worker process's peak so far (workers are reused: every part it ran counts).
    raw["worker_peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # Of its resident memory now, the object store's shared pages it has touched (which the
    # OS counts in its RSS: they are the store's, not the worker's own).
    raw["worker_shared_rss"] = _shared_rss()
    return raw


def load_checkpoint_names(model_path: str) -> list[str]:
    from arrowquant.checkpoint import load_checkpoint

    return load_checkpoint(model_path).names()


def part_jobs(model_path: str, job: Any, ranges: list[tuple[int, int]]) -> list[Any]:
    """The job's inputs for each part: its tensors' activation plans and second moments only
    (GPTQ's H are most of a calibrated job's inputs: a task gets its part's share)."""
    import dataclasses

    names = load_checkpoint_names(model_path)
    out = []
    for begin, end in ranges:
        mine = set(names[begin:end])
        out.append(
            dataclasses.replace(
                job,
                plans={k: v for k, v in job.plans.items() if k in mine},
                moments={k: v for k, v in job.moments.items() if k in mine},
            )
        )
    return out


def run_on_ray(
    model_path: str,
    out_file: Path,
    job: Any,
    progress: Any,
    limits: tuple[int, int, int, int],
) -> dict[str, Any]:
    """`_core.run_pipeline`'s result for the job run as Ray tasks (see the module's doc), in
    the caller's Ray session (session())."""
    import ray

    t0 = time.perf_counter()
    folder = out_file.parent
    pending: list[Any] = []
    files: _DatasetFiles | None = None
    try:
        t1 = time.perf_counter()
        core = job.core()
        budget = _core.assign_budgets(model_path, core)
        t2 = time.perf_counter()
        cpus = cluster_cpus()
        ship = job.cfg.ray_transfer == "object-store"
        # Shipped parts are smaller: those sent ahead sit in the object store (a quarter of the
        # checkpoint at most, SHIPPED_PER_CPU / SHIPPED_PARTS_PER_CPU).
        ranges = parts_of(model_path, cpus * (SHIPPED_PARTS_PER_CPU if ship else PARTS_PER_CPU))
        task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_run_part)
        jobs = part_jobs(model_path, job, ranges)
        paths = [str(folder / f"part-{i:05d}.parquet") for i in range(len(ranges))]
        names = load_checkpoint_names(model_path) if ship else []
        shipped = 0  # checkpoint bytes sent through the object store
        index: dict[Any, int] = {}

        def submit(i: int) -> None:
            nonlocal shipped
            replica = None
            if ship:
                from arrowquant.replica import replica_of

                r = replica_of(model_path, set(names[ranges[i][0] : ranges[i][1]]))
                shipped += r.nbytes
                replica = ray.put(r)
            # Shipped: the task gets no path of the driver's to read.
            where = None if ship else model_path
            ref = task.remote(where, paths[i], jobs[i], budget, ranges[i], limits, i, replica)
            index[ref] = i
            pending.append(ref)

        # Shipped parts wait in the object store: at most SHIPPED_PER_CPU a CPU are out at once.
        window = cpus * SHIPPED_PER_CPU if ship else len(ranges)
        submitted = min(window, len(ranges))
        for i in range(submitted):
            submit(i)
        results: list[dict[str, Any] | None] = [None] * len(ranges)
        done, merged, merging, part_bytes = 0, 0, 0.0, 0
        merger = None
        # A dataset on shared storage: its files written by tasks, several at once (below).
        files = (
            _DatasetFiles(model_path, out_file, job, paths)
            if core.max_file_bytes and not ship
            else None
        )
        while pending:
            # In short waits: Python runs its Ctrl-C handler only between them.
            ready, pending = ray.wait(pending, num_returns=1, timeout=WAIT_S)
            for ref in ready:
                if ref not in index:  # a dataset file's task
                    _get(ray, ref)
                    continue
                raw = results[index[ref]] = _get(ray, ref)
                if "part_file" in raw:  # a worker without shared storage sent it back
                    raw.pop("part_file").tofile(paths[index[ref]])
                if submitted < len(ranges):
                    submit(submitted)
                    submitted += 1
                done += sum(int(x["source_bytes"]) for x in raw["layers"])
                last = raw["layers"][-1]["name"] if raw["layers"] else ""
                if progress is not None and progress(done, _total(results, done), last) is False:
                    raise CancelledError(f"{out_file}: cancelled")
            # Every part whose predecessors are in goes in now, while the others still run.
            t = time.perf_counter()
            while merged < len(results) and (head := results[merged]) is not None:
                part_bytes += Path(paths[merged]).stat().st_size
                if files is not None:  # its files that are now known go to tasks
                    pending += files.add_part(head, last=merged == len(results) - 1)
                    merged += 1
                    continue
                if merger is None:
                    merger = _core.PartMerger.open(
                        model_path, str(out_file), core, head["modality"]
                    )
                merger.append(paths[merged])
                Path(paths[merged]).unlink()
                merged += 1
            merging += time.perf_counter() - t
        t3 = time.perf_counter()
        if files is not None:
            files.finish()
        else:
            assert merger is not None
            merger.close()
        t4 = time.perf_counter()
        out = _combined([r for r in results if r is not None])
        out["scale_out"] = {
            "parts": len(ranges),
            "cluster_cpus": cpus,
            "part_file_bytes": part_bytes,  # written by the tasks, read back by the merge
            # (or by the dataset's file tasks)
            "transfer": job.cfg.ray_transfer,
            "dataset_files_by_tasks": files.count if files is not None else 0,
            "checkpoint_bytes_shipped": shipped,  # through the object store (object-store)
            "worker_peak_rss": max(int(r["worker_peak_rss"]) for r in results if r),
            "worker_shared_rss": max(int(r["worker_shared_rss"]) for r in results if r),
            # The largest part's inputs: second moments a task holds besides its tensors.
            "part_moments_bytes_max": max(_moments_bytes(j) for j in jobs),
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
        # A cluster this job started goes down with it (session), its workers with it. On
        # another cluster the queued parts are dropped; running ones finish and find the
        # output's temporary folder gone. Not force=True: killing a worker whose reply is
        # already on its way aborted the driver in Ray's task bookkeeping (Ray 2.60, under load).
        if not _owned:
            for ref in pending:
                ray.cancel(ref, force=False)
        raise
    finally:
        for p in folder.glob("part-*.parquet*"):
            p.unlink(missing_ok=True)
        if files is not None:
            shutil.rmtree(files.folder, ignore_errors=True)  # gone on success (finish)


def _write_file(
    model_path: str, parts: list[str], first: int, count: int, path: str, job: Any,
    modality: str, index: int,
) -> dict[str, int]:  # fmt: skip
    """One Ray task: file `index` of the job's dataset from the parts' scratch files."""
    # The test hook's marker beside the part files (removed with them).
    _fault(index, "f", lambda _log: str(Path(path).parent.parent / f"part-f{index}.parquet.fault"))
    _core.write_dataset_file(model_path, parts, first, count, path, job.core(), modality, index)
    return {"file": index}


class _DatasetFiles:
    """The job's dataset written by Ray tasks, a file each, several at once, instead of by the
    driver in order (shared storage only: the tasks read the part files). The parts, taken in
    order, give the tensors' payload bytes; the split (C++ DatasetFileStarts, the local
    writer's rule) fixes a file once the next one has started, or the parts are all in; its
    task then copies its tensors from the part files that hold them. The files are the local
    run's, byte for byte but their creation time; FinishDataset names them at the end."""

    def __init__(self, model_path: str, out_file: Path, job: Any, paths: list[str]) -> None:
        import dataclasses

        import ray

        self.model_path, self.out_file, self.paths = model_path, out_file, paths
        # The files need the job's metadata only, not its plans and second moments.
        self.job = dataclasses.replace(job, plans={}, moments={}, sensitivity={})
        self.max_bytes = int(job.core().max_file_bytes)
        self.folder = Path(f"{out_file}.tmp-{os.getpid()}")
        self.folder.mkdir()
        self.task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(_write_file)
        self.sizes: list[int] = []  # payload bytes of the tensors of the parts in, in order
        self.part_starts: list[int] = []  # each part's first tensor among them
        self.modality = ""
        self.count = 0  # files given to tasks
        self.refs: list[Any] = []

    def add_part(self, raw: dict[str, Any], last: bool) -> list[Any]:
        """The next part's report; returns the tasks started for the files now known."""
        self.modality = raw["modality"]
        self.part_starts.append(len(self.sizes))
        self.sizes += [int(x["stored_bytes"]) for x in raw["layers"]]
        starts = list(_core.dataset_file_starts(self.sizes, self.max_bytes))
        bounds = [*starts, len(self.sizes)]
        known = len(starts) if last else len(starts) - 1
        new = []
        for f in range(self.count, known):
            first, end = bounds[f], bounds[f + 1]
            # The parts holding tensors [first, end): from the last one starting at or before
            # `first` (a part may hold no tensors at all) to the last one starting before `end`.
            a = max(i for i, p in enumerate(self.part_starts) if p <= first)
            b = max([i for i, p in enumerate(self.part_starts) if p < end] + [a])
            ref = self.task.remote(
                self.model_path,
                self.paths[a : b + 1],
                first - self.part_starts[a],
                end - first,
                str(self.folder / _core.dataset_pending_name(f + 1)),
                self.job,
                self.modality,
                f + 1,
            )
            new.append(ref)
        self.count = max(self.count, known)
        self.refs += new
        return new

    def finish(self) -> None:
        """After every file's task is done: the files named, the folder moved into place."""
        import ray

        left = list(self.refs)
        while left:
            ready, left = ray.wait(left, num_returns=len(left), timeout=WAIT_S)
            for ref in ready:
                _get(ray, ref)
        _core.finish_dataset(str(self.folder), str(self.out_file), self.count)


def _shared_rss() -> int:
    """RssShmem of this process (Linux; 0 elsewhere): shared memory it has touched."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssShmem:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _moments_bytes(job: Any) -> int:
    from arrowquant.calibration.capture import _h_bytes

    return sum(_h_bytes(h.dim, h.block) for pair in job.moments.values() for h in pair)


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
    del out["worker_peak_rss"], out["worker_shared_rss"]
    out["layers"] = [x for r in raws for x in r["layers"]]
    for key in ("source_bytes", "stored_bytes", "quantized_params", "total_params"):
        out[key] = sum(int(r[key]) for r in raws)
    out["threshold_missed"] = any(r["threshold_missed"] for r in raws)
    return out
