"""A model written as a Parquet dataset (--max-file-size): a folder of files that every reader
here, pyarrow.dataset and DuckDB open as the one model file's rows; the loaders give what the
single file gives."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

import arrowquant as aq
import arrowquant.torch as aqt
from arrowquant.config import parse_size
from arrowquant.diffusion import initial_noise, load_reference, sample

ROOT = Path(__file__).resolve().parents[2]
DDPM, DIT = ROOT / "models" / "digits-ddpm", ROOT / "models" / "digits-dit"
NAME = re.compile(r"model-(\d{5})-of-(\d{5})\.parquet")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "arrowquant", *args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The DiT, calibrated (time-aware activations, GPTQ, size allocation), as one file and as
    a dataset of files of at most 64 KB (one calibration, from the shared cache)."""
    d = tmp_path_factory.mktemp("dataset")
    kw = {"calibration_samples": 8, "calibration_steps": 4, "calibration_cache": str(d / "c")}
    aq.ArrowQuantV2().quantize_diffusion_model(DIT, d / "one", aq.DiffusionQuantConfig(**kw))
    aq.ArrowQuantV2().quantize_diffusion_model(
        DIT, d / "set", aq.DiffusionQuantConfig(max_file_size="64KB", **kw)
    )
    return d / "one", d / "set"


def test_dataset_holds_the_single_files_rows(calibrated: tuple[Path, Path]) -> None:
    one, dataset = calibrated
    folder = dataset / "model.aq.parquet"
    files = sorted(folder.iterdir())
    assert len(files) > 3 and all(NAME.fullmatch(f.name) for f in files)
    assert {NAME.fullmatch(f.name).group(2) for f in files} == {f"{len(files):05d}"}  # type: ignore[union-attr]
    fa, fb = aq.open(one), aq.open(dataset)
    assert fa.names() == fb.names()
    for name in fa.names():
        assert fa.info(name) == fb.info(name), name
        if fa.info(name)["spec"] is not None:
            ta, tb = fa.tensor(name), fb.tensor(name)
            for part in ("codes", "scales", "zeros"):
                assert np.array_equal(getattr(ta, part), getattr(tb, part)), name
    meta_a, meta_b = dict(fa.metadata), dict(fb.metadata)
    for m in (meta_a, meta_b):
        m.pop("arrowquant.created")
        m["arrowquant.recipe"].pop("calibration")  # the second run's came from the cache
    assert meta_a == meta_b  # the job's recipe and provenance, the totals summed
    # pyarrow.dataset and DuckDB read the folder as the single file's table.
    cols = ["layer_name", "chunk_index", "quant_type", "bits", "time_groups", "data"]
    want = pq.read_table(one / "model.aq.parquet", columns=cols)
    assert pads.dataset(folder).to_table(columns=cols).equals(want)
    import duckdb

    rows = duckdb.sql(f"select layer_name from read_parquet('{folder}/*.parquet')").fetchall()
    assert sorted(r[0] for r in rows) == sorted(want.column("layer_name").to_pylist())
    # Each file: a model file of its own, with its place in the dataset in its footer.
    for i, f in enumerate(files, 1):
        meta = pq.read_metadata(f).metadata
        assert meta[b"arrowquant.dataset_file"] == str(i).encode()
    size = sum(f.stat().st_size for f in files)
    assert aq.model.file_bytes(dataset) == size
    assert json.loads((dataset / "report.json").read_text())["summary"]["file_bytes"] == size


def test_dataset_samples_as_the_single_file(calibrated: tuple[Path, Path]) -> None:
    """The packed runtime, with time-aware activation quantization, built from the dataset:
    the single file's samples exactly."""
    one, dataset = calibrated
    ref = load_reference(DIT)
    noise, labels = initial_noise(ref, 4, seed=3)
    samples = []
    for q in (one, dataset):
        m = load_reference(DIT).module
        aqt.apply(m, q)
        samples.append(sample(ref, m, noise, labels, 6).samples)
    assert torch.equal(samples[0], samples[1])
    a = aq.load_state_dict(one, dtype=torch.float32)
    b = aq.load_state_dict(dataset, dtype=torch.float32)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cli_max_file_size(tmp_path: Path) -> None:
    r = _cli(
        "quantize", str(DDPM), str(tmp_path / "q"), "--no-calibration", "--max-file-size", "0.2MB"
    )
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "q" / "model.aq.parquet").iterdir())
    assert len(files) > 1
    r = _cli("inspect", str(tmp_path / "q"))
    n = len(aq.open(tmp_path / "q").names())
    assert r.returncode == 0 and f"{n} tensors, {len(files)} files (a Parquet dataset)" in r.stdout
    r = _cli("export", str(tmp_path / "q"), str(tmp_path / "x.safetensors"))
    assert r.returncode == 0, r.stderr
    for bad, says in (("2XB", "is not a size"), ("0", "less than a byte")):
        r = _cli(
            "quantize", str(DDPM), str(tmp_path / "b"), "--no-calibration", "--max-file-size", bad
        )
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = _cli(
        "quantize",
        str(DDPM),
        str(tmp_path / "g"),
        "--no-calibration",
        "--format",
        "gguf",
        "--max-file-size",
        "1MB",
    )
    assert r.returncode == 2 and "Parquet output only" in r.stderr
    assert not (tmp_path / "b").exists() and not (tmp_path / "g").exists()


def test_damaged_dataset_is_a_clear_error(tmp_path: Path) -> None:
    aq.ArrowQuantV2().quantize_diffusion_model(
        DDPM, tmp_path / "q", aq.DiffusionQuantConfig(calibration="", max_file_size="200KB")
    )
    folder = tmp_path / "q" / "model.aq.parquet"
    second = sorted(folder.iterdir())[1]
    second.unlink()
    with pytest.raises(aq.ArrowQuantError, match=f"{second.name} is missing"):
        aq.open(tmp_path / "q")
    r = _cli("inspect", str(tmp_path / "q"))
    assert r.returncode == 2 and second.name in r.stderr and "Traceback" not in r.stderr


def test_parse_size() -> None:
    assert parse_size("2GB") == 2_000_000_000
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("500mb") == 500_000_000
    assert parse_size("4096") == 4096
    for bad in ("", "GB", "-1GB", "1.5.2MB", "3 parsecs"):
        with pytest.raises(ValueError):
            parse_size(bad)
