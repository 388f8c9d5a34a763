"""Calibration inputs: what the FP model is run on while its activations are recorded.

Sources:
- ``synthetic`` or ``synthetic:N``: N trajectories of the FP model's own sampler from Gaussian
  noise (class labels cycled over the classes for class-conditional models);
- a ``.jsonl`` file: one JSON object a line with ``label`` / ``class`` (class-conditional
  models) or ``prompt`` / ``text``;
- a ``.parquet`` file with such a column;
- a Hugging Face ``datasets`` folder saved with ``save_to_disk``.
Rows set the number of trajectories and their conditioning; the noise is always drawn from the
seed, so a run is reproducible.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arrowquant.errors import ConfigurationError, UnsupportedError

LABEL_KEYS = ("label", "labels", "class", "class_label")
TEXT_KEYS = ("prompt", "text", "caption")
DEFAULT_SYNTHETIC = 64


@dataclass
class CalibrationSet:
    source: str
    count: int
    labels: list[int] | None = None
    texts: list[str] | None = None
    digest: str = field(default="")

    def __post_init__(self) -> None:
        if not self.digest:
            doc = {"count": self.count, "labels": self.labels, "texts": self.texts}
            self.digest = hashlib.sha256(json.dumps(doc).encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        kind = "labels" if self.labels else "texts" if self.texts else "unconditional"
        return {"source": self.source, "rows": self.count, "kind": kind, "digest": self.digest}


def _from_rows(source: str, rows: list[dict[str, Any]], where: str) -> CalibrationSet:
    if not rows:
        raise ConfigurationError(f"{where}: calibration data has no rows")
    labels: list[int] = []
    texts: list[str] = []
    for i, row in enumerate(rows):
        lk = next((k for k in LABEL_KEYS if k in row and row[k] is not None), None)
        tk = next((k for k in TEXT_KEYS if k in row and row[k] is not None), None)
        if lk is not None:
            v = row[lk]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigurationError(f"{where}: row {i + 1}: {lk} must be an integer >= 0")
            labels.append(v)
        elif tk is not None:
            if not isinstance(row[tk], str):
                raise ConfigurationError(f"{where}: row {i + 1}: {tk} must be a string")
            texts.append(row[tk])
        else:
            raise ConfigurationError(
                f"{where}: row {i + 1} has none of {', '.join(LABEL_KEYS + TEXT_KEYS)}"
            )
    if labels and texts:
        raise ConfigurationError(f"{where}: rows mix class labels and texts")
    return CalibrationSet(source, len(rows), labels or None, texts or None)


def _jsonl(path: Path) -> CalibrationSet:
    rows = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ConfigurationError(
                    f"{path}:{lineno}: not UTF-8 text (byte {e.start + 1} of the line)"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigurationError(f"{path}:{lineno}: not JSON ({e.msg})") from None
            except RecursionError:
                raise ConfigurationError(f"{path}:{lineno}: JSON nested too deeply") from None
            if not isinstance(row, dict):
                raise ConfigurationError(f"{path}:{lineno}: expected a JSON object a line")
            rows.append(row)
    return _from_rows(str(path), rows, str(path))


def _parquet(path: Path) -> CalibrationSet:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    # ValueError: names or strings that are not UTF-8; OverflowError: dates Python cannot hold.
    except (pa.ArrowException, OSError, ValueError, OverflowError) as e:
        raise ConfigurationError(f"{path}: not a readable Parquet file ({e})") from None
    return _from_rows(str(path), rows, str(path))


def _hf_dataset(path: Path) -> CalibrationSet:
    try:
        import datasets
    except ImportError:
        raise UnsupportedError(
            f"{path}: a Hugging Face dataset folder needs the `datasets` package"
        ) from None
    try:
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            split = "train" if "train" in ds else next(iter(ds))
            ds = ds[split]
        rows = [dict(r) for r in ds]
    # `datasets` fails on a damaged folder with whatever its parsers raise (JSON, Arrow, key and
    # type errors, ...): each is the user's file being unreadable, so name the folder and the cause.
    except Exception as e:  # noqa: BLE001
        raise ConfigurationError(
            f"{path}: not a readable dataset saved with save_to_disk ({type(e).__name__}: {e})"
        ) from None
    return _from_rows(str(path), rows, str(path))


def load_calibration(
    spec: str | os.PathLike[str], synthetic_samples: int = DEFAULT_SYNTHETIC
) -> CalibrationSet:
    """A calibration set from ``synthetic[:N]`` (N defaults to `synthetic_samples`) or a JSONL /
    Parquet / datasets path."""
    text = str(spec)
    if text == "synthetic" or text.startswith("synthetic:"):
        n_text = text.partition(":")[2] or str(synthetic_samples)
        if not n_text.isdigit() or int(n_text) < 1:
            raise ConfigurationError(f"calibration {text!r}: N in synthetic:N must be >= 1")
        return CalibrationSet(text, int(n_text))
    path = Path(text)
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            return _hf_dataset(path)
        raise ConfigurationError(f"{path}: a folder that is not a saved Hugging Face dataset")
    if not path.is_file():
        raise ConfigurationError(f"{path}: no such calibration file (or 'synthetic[:N]')")
    if path.suffix == ".jsonl":
        return _jsonl(path)
    if path.suffix == ".parquet":
        return _parquet(path)
    raise ConfigurationError(f"{path}: calibration data must be .jsonl, .parquet or a dataset")
