"""Atheris (libFuzzer for Python): the calibration data loaders - a `.jsonl` file, a `.parquet`
file, or one file of a dataset folder saved with `datasets.save_to_disk` - to a CalibrationSet.
The first input byte picks the loader (and, for a dataset, which of its files the rest replaces).
Anything but an ArrowQuantError for bad input is a finding."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from arrowquant.calibration.data import load_calibration
    from arrowquant.errors import ArrowQuantError


def _seed_dataset(root: Path) -> tuple[Path, list[str]]:
    """A real saved dataset whose files the fuzzer overwrites one at a time (restored after)."""
    import datasets

    folder = root / "ds"
    datasets.Dataset.from_dict({"prompt": ["a thin zero", "a handwritten seven"]}).save_to_disk(
        str(folder)
    )
    return folder, sorted(p.name for p in folder.iterdir())


ROOT = Path(tempfile.mkdtemp(prefix="aq-fuzz-calib-"))
DATASET, DATASET_FILES = _seed_dataset(ROOT)
ORIGINALS = {name: (DATASET / name).read_bytes() for name in DATASET_FILES}


def test_one_input(data: bytes) -> None:
    if not data:
        return
    kind, body = data[0] % (2 + len(DATASET_FILES)), data[1:]
    if kind == 0:
        target = ROOT / "c.jsonl"
    elif kind == 1:
        target = ROOT / "c.parquet"
    else:
        target = DATASET / DATASET_FILES[kind - 2]
    target.write_bytes(body)
    try:
        with contextlib.suppress(ArrowQuantError), contextlib.redirect_stderr(io.StringIO()):
            load_calibration(DATASET if kind >= 2 else target)
    finally:
        if kind >= 2:
            target.write_bytes(ORIGINALS[target.name])


if __name__ == "__main__":
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
    finally:
        shutil.rmtree(ROOT, ignore_errors=True)
