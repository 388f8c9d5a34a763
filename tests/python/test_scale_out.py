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

import arrowquant as aq
import arrowquant._core as _core
from arrowquant import scale_out

ROOT = Path(__file__).resolve().parents[2]
DDPM, DIT = ROOT / "models" / "digits-ddpm", ROOT / "models" / "digits-dit"
CREATED = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local Ray cluster of 2 CPUs on which part 1 of every job dies on its first attempt (a
    killed worker, scale_out.FAULT_ENV): every job here runs through one retry. Yields the log
    of those deaths (a line each)."""
    import ray

    log = tmp_path_factory.mktemp("faults") / "killed.log"
    log.touch()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": {scale_out.FAULT_ENV: f"1:{log}"}},
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


def test_ray_calibrated_job_is_the_local_one(cluster: Path, tmp_path: Path) -> None:
    """The calibrated job (activation parameters, GPTQ second moments shipped to the workers,
    the size allocator's widths): every tensor stored as the local run stores it."""
    cache = str(tmp_path / "cache")
    kw: dict[str, Any] = {
        "calibration_samples": 4,
        "calibration_steps": 4,
        "calibration_cache": cache,
    }
    aq.ArrowQuantV2().quantize_diffusion_model(DIT, tmp_path / "one", aq.DiffusionQuantConfig(**kw))
    aq.ArrowQuantV2().quantize_diffusion_model(
        DIT, tmp_path / "ray", aq.DiffusionQuantConfig(ray="default", **kw)
    )
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
