"""Scale-out (arrowquant.scale_out): a job run in parts and merged, and as Ray tasks on a local
cluster, writes the file a single process writes; a killed worker's task is retried; a
cancelled job leaves nothing behind."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
from child_process import default_sigint

import arrowquant as aq
import arrowquant._core as _core
from arrowquant import scale_out

ROOT = Path(__file__).resolve().parents[2]
DDPM, DIT = ROOT / "models" / "digits-ddpm", ROOT / "models" / "digits-dit"
CREATED = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray cluster of 2 CPUs on which part 1 of every job dies on its first attempt (a
    killed worker, scale_out.FAULT_ENV), and dataset file 1's task, and the first calibration
    batch 1 recorded on it: every job here runs through a retry. Yields the log of those deaths
    (a line each)."""
    import ray

    log = tmp_path_factory.mktemp("faults") / "killed.log"
    log.touch()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {scale_out.FAULT_ENV: f"1,f1,c1:{log}"}},
    )
    yield log
    ray.shutdown()


def _file(out: Path) -> bytes:
    """The model file's bytes with its creation time blanked (the one field allowed to differ)."""
    return CREATED.sub(b"0000-00-00T00:00:00Z", (out / aq.api.MODEL_FILE).read_bytes())


def test_parts_cover_the_tensors_in_order() -> None:
    for n in (1, 2, 5, 1000):
        ranges = scale_out.parts_of(str(DIT), n)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(aq.load_checkpoint(DIT).names())
        assert all(
            a[1] == b[0] and a[0] < a[1] for a, b in zip(ranges[:-1], ranges[1:], strict=True)
        )
        assert len(ranges) <= n


def test_parts_merged_equal_one_run(tmp_path: Path) -> None:
    """The C++ side alone: the job in three parts with the budget assigned once, merged, is the
    single run's file (a size budget, so every width depends on every layer)."""
    cfg = aq.DiffusionQuantConfig(calibration="", target_bpw=3.5)
    core = cfg.to_core(json.dumps({"recipe": "test"}))
    one = _core.run_pipeline(str(DDPM), str(tmp_path / "one.parquet"), core, None, cfg.limits())
    core.set_budget(*_core.assign_budgets(str(DDPM), core))
    parts, layers = [], []
    for i, r in enumerate(scale_out.parts_of(str(DDPM), 3)):
        core.part = r
        p = tmp_path / f"part{i}.parquet"
        layers += _core.run_pipeline(str(DDPM), str(p), core, None, cfg.limits())["layers"]
        parts.append(str(p))
    _core.merge_parts(str(DDPM), parts, str(tmp_path / "merged.parquet"), core, one["modality"])
    a = CREATED.sub(b"", (tmp_path / "one.parquet").read_bytes())
    assert a == CREATED.sub(b"", (tmp_path / "merged.parquet").read_bytes())
    assert layers == one["layers"]


def _sharded(folder: Path) -> Path:
    """models/digits-ddpm's UNet as two shards and an index (checkpoint order: the index's)."""
    ck = aq.load_checkpoint(DDPM)
    names = ck.names()
    half = len(names) // 2
    index: dict[str, Any] = {"metadata": {}, "weight_map": {}}
    for i, chunk in enumerate((names[:half], names[half:])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        safetensors.numpy.save_file(
            {n.split("/", 1)[-1]: np.asarray(ck.numpy(n)) for n in chunk}, str(folder / shard)
        )
        index["weight_map"] |= {n.split("/", 1)[-1]: shard for n in chunk}
    path = folder / "model.safetensors.index.json"
    path.write_text(json.dumps(index))
    return path


@pytest.mark.parametrize("model", ["ddpm", "dit", "sharded"])
def test_ray_weight_only_is_the_local_file(model: str, cluster: Path, tmp_path: Path) -> None:
    """Each job's part 1 is killed once and retried: the file is still the local run's."""
    path = {"ddpm": DDPM, "dit": DIT}.get(model) or _sharded(tmp_path)
    killed = len(cluster.read_text().splitlines())
    cfg = aq.DiffusionQuantConfig(calibration="")
    a = aq.ArrowQuantV2().quantize_diffusion_model(path, tmp_path / "one", cfg)
    b = aq.ArrowQuantV2().quantize_diffusion_model(
        path, tmp_path / "ray", aq.DiffusionQuantConfig(calibration="", ray="default")
    )
    assert _file(tmp_path / "one") == _file(tmp_path / "ray")
    assert len(cluster.read_text().splitlines()) == killed + 1  # its worker was killed once
    assert [x["name"] for x in a.layers] == [x["name"] for x in b.layers]
    assert (a.stored_bytes, a.quantized_params) == (b.stored_bytes, b.quantized_params)
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def test_replica_holds_the_part_and_nothing_else(tmp_path: Path) -> None:
    """A replica of a sharded checkpoint for some tensors: the index and the shards at their
    sizes, those tensors' bytes, holes elsewhere (sparse), and what travels is their bytes and
    the headers and index only. A lone file that is a link (a Hugging Face cache's snapshot
    links its files to blobs elsewhere): copied under the link's name."""
    from arrowquant.replica import Built, replica_of

    path = _sharded(tmp_path)
    ck = aq.load_checkpoint(path)
    names = ck.names()
    part = set(names[3:9])
    r = replica_of(str(path), part)
    headers = sum(len(b) for rel, (_, ranges) in r.files.items() for o, b in ranges if o == 0)
    assert r.nbytes == headers + sum(ck.info(n).nbytes for n in part)
    with Built(r) as copy:
        assert Path(copy.path).name == path.name
        other = aq.load_checkpoint(copy.path)
        assert other.names() == names
        for n in names:
            want = np.asarray(ck.raw(n)) if n in part else np.zeros(ck.info(n).nbytes, np.uint8)
            assert np.array_equal(np.asarray(other.raw(n)), want), n
        for shard in tmp_path.glob("*.safetensors"):
            copied = copy.folder / shard.name
            assert copied.stat().st_size == shard.stat().st_size
            assert copied.stat().st_blocks * 512 < shard.stat().st_size  # holes take no disk
    assert not copy.folder.exists()
    (tmp_path / "snapshot").mkdir()
    link = tmp_path / "snapshot" / "diffusion_pytorch_model.safetensors"
    link.symlink_to(tmp_path / "model-00001-of-00002.safetensors")
    first = aq.load_checkpoint(link).names()
    with Built(replica_of(str(link), set(first[:2]))) as copy:
        assert Path(copy.path).name == link.name
        assert aq.load_checkpoint(copy.path).names() == first


def test_ray_object_store_transfer_is_the_local_file(cluster: Path, tmp_path: Path) -> None:
    """Workers that get the tensors through the object store (and never the driver's path)
    and send their part files back: the local run's file; every tensor byte sent once."""
    path = _sharded(tmp_path)
    a = aq.ArrowQuantV2().quantize_diffusion_model(
        path, tmp_path / "one", aq.DiffusionQuantConfig(calibration="")
    )
    cfg = aq.DiffusionQuantConfig(calibration="", ray="default", ray_transfer="object-store")
    b = aq.ArrowQuantV2().quantize_diffusion_model(path, tmp_path / "ray", cfg)
    assert _file(tmp_path / "one") == _file(tmp_path / "ray")
    assert [x["name"] for x in a.layers] == [x["name"] for x in b.layers]
    so = b.extra["scale_out"]
    assert so["transfer"] == "object-store"
    tensors = aq.load_checkpoint(path).total_bytes
    assert tensors <= so["checkpoint_bytes_shipped"] < tensors + 64 * 1024 * so["parts"]


@pytest.mark.parametrize("transfer", ["storage", "object-store"])
def test_ray_dataset_is_the_local_dataset(transfer: str, cluster: Path, tmp_path: Path) -> None:
    """With max_file_size the Ray job writes the dataset a local run writes: the same files,
    each byte for byte but its creation time. Reading storage, its files are written by tasks,
    several at once (file 1's killed once and retried, as part 1's); through the object store,
    by the driver's merge."""
    killed = cluster.read_text().splitlines()
    for out, ray in (("one", ""), ("ray", "default")):
        cfg = aq.DiffusionQuantConfig(
            calibration="", max_file_size="200KB", ray=ray, ray_transfer=transfer
        )
        rep = aq.ArrowQuantV2().quantize_diffusion_model(DDPM, tmp_path / out, cfg)
    a = sorted((tmp_path / "one" / aq.api.MODEL_FILE).iterdir())
    b = sorted((tmp_path / "ray" / aq.api.MODEL_FILE).iterdir())
    assert len(a) > 2 and [p.name for p in a] == [p.name for p in b]
    for x, y in zip(a, b, strict=True):
        assert CREATED.sub(b"", x.read_bytes()) == CREATED.sub(b"", y.read_bytes()), x.name
    by_tasks = rep.extra["scale_out"]["dataset_files_by_tasks"]
    new = cluster.read_text().splitlines()[len(killed) :]
    if transfer == "storage":
        assert by_tasks == len(a) and sorted(new) == ["1", "f1"]
    else:
        assert by_tasks == 0 and new == ["1"]
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def test_ray_calibration_batches_merge_to_the_local_record(cluster: Path) -> None:
    """Calibration's batches recorded on the cluster's two workers (batch 1's worker killed
    once, restarted, the batch retried) merge into the record one process makes with torch on
    one thread, as the workers run it (oneDNN's convolutions round differently at other thread
    counts): activation statistics, second moments, kept input rows and the call sample,
    exactly. The DDPM: convolutions, attention and linear layers."""
    import torch

    from arrowquant.calibration import capture, load_calibration
    from arrowquant.diffusion import load_reference

    ref = load_reference(DDPM)
    calib = load_calibration("synthetic", 10)  # batches of 4: 4, 4 and 2 trajectories

    def record(pool: Any) -> tuple[Any, ...]:
        moments: dict[str, Any] = {}
        rows: dict[str, Any] = {}
        calls: list[Any] = []
        stats = capture(
            ref, calib, 3, 0, batch=4, max_rows=48, moments=moments, row_samples=rows,
            recorded_calls=calls, pool=pool, threads=2,
        )  # fmt: skip
        return stats, moments, rows, calls

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sa, ma, ra, ca = record(None)
    finally:
        torch.set_num_threads(threads)
    # The actors read the model where the driver does, then get it through the object store.
    for ship in (False, True):
        with scale_out.calibration_pool(str(DDPM), "default", 3, ship=ship) as pool:
            sb, mb, rb, cb = record(pool)
            assert pool is not None and (pool.workers, pool.recorded) == (2, 3)
        assert "c1" in cluster.read_text().splitlines()
        assert list(sa) == list(sb)
        for name in sa:
            for x, y in zip(sa[name].stats(), sb[name].stats(), strict=True):
                assert x.keys() == y.keys()
                assert all(np.array_equal(x[k], y[k]) for k in x), name
        assert list(ma) == list(mb) and ma
        for name, (fit, check) in ma.items():
            for h, g in zip((fit, check), mb[name], strict=True):
                assert h.count == g.count and h.count > 0
                assert np.array_equal(h.data(), g.data()), name
        assert list(ra) == list(rb) and ra
        assert all(ra[k].shape[0] <= 48 and bool((ra[k] == rb[k]).all()) for k in ra)
        assert len(ca) == len(cb) > 0
        assert repr(ca) == repr(cb)  # the same calls' tensors, in the same order


def test_merged_call_sample_is_uniform() -> None:
    """Merging two parts' samples (3 and 4 calls seen, up to 4 kept) keeps each call with
    probability 4/7, as one sample over all 7 would."""
    import random

    from arrowquant.calibration.recording import merged_sample

    rng = random.Random(0)
    hits = [0] * 7
    trials = 7000
    for _ in range(trials):
        got = merged_sample([0, 1, 2], 3, [3, 4, 5, 6], 4, 4, rng)
        assert len(got) == 4 and len(set(got)) == 4
        for x in got:
            hits[x] += 1
    assert all(abs(h / trials - 4 / 7) < 0.025 for h in hits), hits


def test_ray_calibrated_job_is_the_local_one(cluster: Path, tmp_path: Path) -> None:
    """The calibrated job, its calibration run in batches on the workers and on its own (not
    from a shared cache), its tensors as Ray tasks (activation parameters and GPTQ's second
    moments shipped with each part, the size allocator's widths): every tensor stored as the
    local run stores it."""
    kw: dict[str, Any] = {
        "calibration_samples": 8,
        "calibration_batch": 4,
        "calibration_steps": 4,
    }
    one = aq.ArrowQuantV2().quantize_diffusion_model(
        DIT, tmp_path / "one", aq.DiffusionQuantConfig(calibration_cache=str(tmp_path / "c1"), **kw)
    )
    ray = aq.ArrowQuantV2().quantize_diffusion_model(
        DIT,
        tmp_path / "ray",
        aq.DiffusionQuantConfig(ray="default", calibration_cache=str(tmp_path / "c2"), **kw),
    )
    cal = ray.extra["calibration"]
    assert cal["cache"] == "miss" and cal["scale_out"]["workers"] == 2
    assert cal["scale_out"]["batches_on_workers"] == 2 and cal["scale_out"]["worker_peak_rss"] > 0
    assert one.extra["calibration"]["batches"] == 2
    assert ray.extra["scale_out"]["part_moments_bytes_max"] > 0
    fa, fb = aq.open(tmp_path / "one"), aq.open(tmp_path / "ray")
    assert fa.names() == fb.names()
    for name in fa.names():
        ia, ib = fa.info(name), fb.info(name)
        assert ia == ib, name
        if ia["spec"] is not None:
            ta, tb = fa.tensor(name), fb.tensor(name)
            for part in ("codes", "scales", "zeros"):
                assert np.array_equal(getattr(ta, part), getattr(tb, part)), name


def test_ray_cancelled_job_leaves_nothing(cluster: Path, tmp_path: Path) -> None:
    """Ctrl-C (KeyboardInterrupt in the driver) and a progress callback's False cancel the
    cluster's tasks; no output, no temporary folder or part file stays."""

    def interrupt(done: int, total: int, name: str) -> bool:
        raise KeyboardInterrupt

    cfg = aq.DiffusionQuantConfig(calibration="", ray="default")
    with pytest.raises(KeyboardInterrupt):
        aq.ArrowQuantV2().quantize_diffusion_model(DIT, tmp_path / "q", cfg, interrupt)
    with pytest.raises(aq.CancelledError):
        aq.ArrowQuantV2().quantize_diffusion_model(DIT, tmp_path / "q", cfg, lambda *a: False)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_ray_without_ray_installed_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_ray(name: str, *a: Any, **k: Any) -> Any:
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with tempfile.TemporaryDirectory() as d, pytest.raises(aq.ConfigurationError, match="ray"):
        aq.ArrowQuantV2().quantize_diffusion_model(
            DIT, Path(d) / "q", aq.DiffusionQuantConfig(calibration="", ray="default")
        )


def test_cli_ctrl_c_on_ray_leaves_nothing(tmp_path: Path) -> None:
    """`arrowquant quantize ... --ray` interrupted while the driver waits on a long part (part 1
    takes 20 s more: scale_out.FAULT_ENV "s1") with the later parts in: exit 130 with one line,
    no output, no temporary folder or part file."""
    import os
    import signal
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(0)
    row = rng.normal(0, 0.02, (256, 1024)).astype(np.float16)
    weights = {f"blocks.{i}.ff.weight": np.roll(row, i, axis=1) for i in range(64)}
    safetensors.numpy.save_file(weights, tmp_path / "m.safetensors")
    out = tmp_path / "out"
    p = subprocess.Popen(
        [sys.executable, "-m", "arrowquant", "quantize", str(tmp_path / "m.safetensors")]
        + [str(out), "--ray", "--no-calibration"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {scale_out.FAULT_ENV: "s1"},
        preexec_fn=default_sigint,
    )

    def parts_after_the_stalled_one() -> int:
        try:
            return sum(
                y.name.startswith("part-") and y.name > "part-00001"
                for x in tmp_path.iterdir()
                if x.name.startswith(".out.tmp")
                for y in x.iterdir()
            )
        except FileNotFoundError:
            return 0

    # Until the other parts are in (their count steady for 2 s): the driver then waits on the
    # stalled part alone, where a wait that ignores signals would hang.
    deadline = time.monotonic() + 120
    seen, since = 0, time.monotonic()
    while (n := parts_after_the_stalled_one()) == 0 or n != seen or time.monotonic() - since < 2:
        assert time.monotonic() < deadline and p.poll() is None, p.communicate()
        if n != seen:
            seen, since = n, time.monotonic()
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.safetensors"]
