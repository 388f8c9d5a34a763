from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import safetensors.numpy


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "arrowquant", *args], capture_output=True, text=True, timeout=120
    )


def test_summary_lists_tensors(tmp_path: Path) -> None:
    safetensors.numpy.save_file(
        {"down.weight": np.zeros((4, 8), np.float16), "down.bias": np.zeros(4, np.float32)},
        tmp_path / "m.safetensors",
    )
    r = _run("summary", str(tmp_path / "m.safetensors"))
    assert r.returncode == 0, r.stderr
    assert "down.weight" in r.stdout and "F16" in r.stdout and "4x8" in r.stdout
    r = _run("summary", "--json", str(tmp_path))
    doc = json.loads(r.stdout)
    assert {t["name"]: t["nbytes"] for t in doc["tensors"]} == {"down.bias": 16, "down.weight": 64}


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\x05")
    cases = [
        ("summary", str(tmp_path / "missing")),
        ("summary", str(tmp_path / "bad.safetensors")),
        ("summary", str(tmp_path)),  # a folder without weights... holds bad.safetensors: malformed
        ("frobnicate",),
        (),
    ]
    for args in cases:
        r = _run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("arrowquant: error:"), (args, r.stderr)
        assert "Traceback" not in r.stderr
    r = _run("summary", str(tmp_path / "bad.safetensors"))
    assert "bad.safetensors" in r.stderr and "8" in r.stderr
