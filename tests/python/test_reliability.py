"""Crash safety, locking, disk full, NaN policy, hostile inputs, and concurrency (issue 8)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch

import arrowquant as aq
from arrowquant.api import output_lock


def _cli(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "arrowquant", *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kw,  # type: ignore[arg-type]
    )


def _one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("arrowquant: error:"), r.stderr
    return lines[0]


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~50 MB of f16 weights: quantizing it takes long enough to be killed mid-way."""
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("big")
    t = {
        f"blocks.{i}.weight": (rng.normal(0, 0.02, (1024, 1024))).astype(np.float16)
        for i in range(24)
    }
    safetensors.numpy.save_file(t, d / "model.safetensors")
    return d / "model.safetensors"


def _digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _complete(out: Path, names: int) -> bool:
    """A complete output: report and a model file whose every tensor decodes."""
    if not out.exists():
        return False
    json.loads((out / "report.json").read_text())
    sd = aq.load_state_dict(out / "model.aq.parquet", dtype=torch.float32)
    assert len(sd) == names and all(torch.isfinite(v).all() for v in sd.values())
    return True


def test_sigkill_never_leaves_a_corrupt_output(big_model: Path, tmp_path: Path) -> None:
    before = _digest(big_model)
    out = tmp_path / "out"
    args = [
        "quantize",
        str(big_model),
        str(out),
        "--profile",
        "local",
        "--method",
        "minmax",
        "--threads",
        "2",
        "--overwrite",
    ]
    t0 = time.perf_counter()
    assert _cli(*args).returncode == 0
    full = time.perf_counter() - t0
    rng = random.Random(0)
    outcomes = {"absent": 0, "complete": 0}
    for i in range(20):
        if i % 2 == 1:  # odd rounds start from no output, even ones from whatever the last left
            shutil.rmtree(out, ignore_errors=True)
        p = subprocess.Popen(
            [sys.executable, "-m", "arrowquant", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.0, full * 1.1))
        p.send_signal(signal.SIGKILL)
        p.wait()
        outcomes["complete" if _complete(out, 24) else "absent"] += 1
    assert _digest(big_model) == before  # the input is never modified
    assert outcomes["complete"] >= 1 and sum(outcomes.values()) == 20
    # A later run cleans up what the killed ones left and succeeds.
    assert _cli(*args).returncode == 0 and _complete(out, 24)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")) == []


def test_second_run_on_the_same_output_is_refused(big_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_lock(out):
        line = _one_error_line(_cli("quantize", str(big_model), str(out)))
    assert "another arrowquant run" in line and f"pid {os.getpid()}" in line
    assert not out.exists()
    assert _cli("quantize", str(big_model), str(out), "--method", "minmax").returncode == 0


def test_disk_full_gives_a_clear_error_and_no_output(big_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    # ulimit -f: writes past 2 MiB fail with EFBIG (Python ignores SIGXFSZ).
    r = subprocess.run(
        [
            "bash",
            "-c",
            f'ulimit -f 2048; exec "{sys.executable}" -m arrowquant quantize '
            f'"{big_model}" "{out}" --method minmax',
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = _one_error_line(r)
    assert "model.aq.parquet" in line or "out" in line
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []


def test_nan_policy(tmp_path: Path) -> None:
    w = np.random.default_rng(1).normal(0, 0.02, (64, 64)).astype(np.float32)
    w[3, 5] = np.nan
    w[7, 1] = np.inf
    ok = np.ones((64, 64), np.float32)
    safetensors.numpy.save_file({"a.weight": w, "b.weight": ok}, tmp_path / "m.safetensors")
    line = _one_error_line(_cli("quantize", str(tmp_path / "m.safetensors"), str(tmp_path / "o")))
    assert "'a.weight'" in line and "2 NaN or Inf" in line
    assert not (tmp_path / "o").exists()
    r = _cli(
        "quantize",
        str(tmp_path / "m.safetensors"),
        str(tmp_path / "o"),
        "--nan-policy",
        "keep-fp16",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    layers = {x["name"]: x for x in json.loads(r.stdout)["layers"]}
    assert layers["a.weight"]["action"] == "kept" and "NaN/Inf" in layers["a.weight"]["why"]
    assert layers["b.weight"]["action"] == "quantized"
    back = aq.load_state_dict(tmp_path / "o" / "model.aq.parquet", dtype=torch.float32)
    a = back["a.weight"]
    assert torch.isnan(a[3, 5]) and torch.isinf(a[7, 1])
    assert int(torch.isfinite(a).sum()) == 64 * 64 - 2


def test_hostile_inputs(tmp_path: Path) -> None:
    # A sharded index naming a shard outside the model folder.
    (tmp_path / "secret.safetensors").write_bytes(b"")
    m = tmp_path / "model"
    m.mkdir()
    (m / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "../secret.safetensors"}})
    )
    line = _one_error_line(_cli("quantize", str(m), str(tmp_path / "o1")))
    assert "outside" in line or "escape" in line.lower() or "leaves" in line
    # A header claiming 2^62 bytes.
    (tmp_path / "huge.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    line = _one_error_line(
        _cli("quantize", str(tmp_path / "huge.safetensors"), str(tmp_path / "o2"))
    )
    assert "huge.safetensors" in line and "header" in line.lower()
    # A pickle passed as a model: refused, and with --allow-pickle never executed.
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    torch.save({"w": Evil()}, tmp_path / "evil.ckpt")
    line = _one_error_line(_cli("quantize", str(tmp_path / "evil.ckpt"), str(tmp_path / "o3")))
    assert "pickle" in line and "--allow-pickle" in line
    line = _one_error_line(
        _cli("quantize", str(tmp_path / "evil.ckpt"), str(tmp_path / "o3"), "--allow-pickle")
    )
    assert "weights_only" in line and not marker.exists()
    for o in ("o1", "o2", "o3"):
        assert not (tmp_path / o).exists()


def test_allowed_pickle_is_quantized(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sd = {"layer.weight": torch.randn(128, 128) * 0.02, "layer.bias": torch.zeros(128)}
    torch.save({"state_dict": sd}, tmp_path / "m.ckpt")
    r = _cli("quantize", str(tmp_path / "m.ckpt"), str(tmp_path / "o"), "--allow-pickle")
    assert r.returncode == 0, r.stderr
    back = aq.load_state_dict(tmp_path / "o" / "model.aq.parquet", dtype=torch.float32)
    assert (
        float((back["layer.weight"] - sd["layer.weight"]).norm() / sd["layer.weight"].norm()) < 0.1
    )


def test_limits_are_enforced_with_clear_errors(big_model: Path, tmp_path: Path) -> None:
    for flag, value, needle in [
        ("--max-tensors", "10", "tensors"),
        ("--max-tensor-bytes", "1000000", "bytes"),
        ("--max-total-bytes", "10000000", "bytes"),
        ("--max-header-bytes", "100", "header"),
    ]:
        line = _one_error_line(_cli("quantize", str(big_model), str(tmp_path / "o"), flag, value))
        assert needle in line.lower() and "model.safetensors" in line, line


def test_api_calls_from_threads_release_the_gil(big_model: Path, tmp_path: Path) -> None:
    cfg = aq.DiffusionQuantConfig.from_profile("local", method="minmax", threads=1)
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    callers: set[int] = set()

    def run(i: int) -> dict[str, torch.Tensor]:
        def progress(done: int, total: int, name: str) -> bool:
            callers.add(threading.get_ident())
            return True

        out = tmp_path / f"o{i}"
        aq.ArrowQuantV2().quantize_diffusion_model(big_model, out, cfg, progress_callback=progress)
        return aq.load_state_dict(out / "model.aq.parquet", dtype=torch.float32)

    with ThreadPoolExecutor(3) as ex:
        results = list(ex.map(run, range(3)))
    stop.set()
    counter.join()
    assert ticks > 50  # the counting thread ran while the C++ work did
    assert len(callers) == 3  # each callback ran on its own calling thread
    for r in results[1:]:
        assert all(torch.equal(r[k], results[0][k]) for k in r)
