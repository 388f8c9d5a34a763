"""On-disk cache of calibration statistics, keyed by model content, calibration set and settings.

One ``.npz`` per key (numpy arrays only, loaded with ``allow_pickle=False``), written to a
temporary name and renamed. The folder is ``$ARROW_QUANT_CACHE`` or ``~/.cache/arrowquant``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

import arrowquant._core as _core
from arrowquant._atomic import write_atomic

FORMAT = 1
T = TypeVar("T")


def cache_dir(override: str = "") -> Path:
    base = override or os.environ.get("ARROW_QUANT_CACHE", "")
    return Path(base) if base else Path.home() / ".cache" / "arrowquant" / "calibration"


def model_digest(folder: Path) -> str:
    """sha256 over the weight files' bytes (name-sorted), i.e. the model's content."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.safetensors")):
        h.update(str(f.relative_to(folder)).encode())
        with f.open("rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest())
    return h.hexdigest()


def cache_key(model: str, calibration: str, settings: dict[str, Any]) -> str:
    doc = json.dumps({"format": FORMAT, "model": model, "calibration": calibration} | settings)
    return hashlib.sha256(doc.encode()).hexdigest()[:32]


def save(path: Path, collectors: dict[str, Any]) -> None:
    arrays: dict[str, np.ndarray] = {}
    names = sorted(collectors)
    for i, name in enumerate(names):
        for s in collectors[name].stats():
            k = f"{i}/{s['timestep']}"
            arrays[f"{k}/count"] = np.array([s["count"]], dtype=np.uint64)
            for f in ("min", "max", "absmax", "histogram"):
                arrays[f"{k}/{f}"] = s[f]
    meta = {"format": FORMAT, "names": names, "channels": [collectors[n].channels for n in names]}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    _write_npz(path, arrays)


def _read(path: Path, parse: Callable[[Any, dict[str, Any]], T]) -> T | None:
    """parse(npz, meta) of the entry at `path`; None if absent, of another format or unreadable
    (then recomputed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes())
            return parse(z, meta) if meta.get("format") == FORMAT else None
    except (OSError, ValueError, KeyError, IndexError):
        return None


def load(path: Path) -> dict[str, Any] | None:
    """The collectors saved at `path` (see _read)."""

    def parse(z: Any, meta: dict[str, Any]) -> dict[str, Any]:
        out = {
            n: _core.ActivationCollector.make(c)
            for n, c in zip(meta["names"], meta["channels"], strict=True)
        }
        for key in z.files:
            if not key.endswith("/count"):
                continue
            i, t, _ = key.split("/")
            k = f"{i}/{t}"
            out[meta["names"][int(i)]].merge(
                int(t),
                int(z[key][0]),
                z[f"{k}/min"],
                z[f"{k}/max"],
                z[f"{k}/absmax"],
                z[f"{k}/histogram"],
            )
        return out

    return _read(path, parse)


# What the second-moment cache depends on besides the capture's own settings.
# version 2: packed upper triangles
MOMENT_SETTINGS: dict[str, Any] = {"what": "second_moments", "version": 2}


def save_moments(path: Path, moments: dict[str, tuple[Any, Any]]) -> None:
    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {"format": FORMAT, "layers": {}}
    for i, (name, (fit, check)) in enumerate(sorted(moments.items())):
        arrays[f"{i}/fit"] = fit.data()
        arrays[f"{i}/check"] = check.data()
        block = 0 if fit.block >= fit.dim else fit.block  # 0: the full matrix
        meta["layers"][name] = [i, fit.dim, block, fit.count, check.count]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    _write_npz(path, arrays)


def load_moments(path: Path) -> dict[str, tuple[Any, Any]] | None:
    """The second moments saved at `path` (see _read)."""

    def parse(z: Any, meta: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        out = {}
        for name, (i, dim, block, n_fit, n_check) in meta["layers"].items():
            fit = _core.SecondMoments.make(dim, block)
            check = _core.SecondMoments.make(dim, block)
            fit.restore(z[f"{i}/fit"], n_fit)
            check.restore(z[f"{i}/check"], n_check)
            out[name] = (fit, check)
        return out

    return _read(path, parse)


def save_arrays(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Named float arrays plus a JSON document (e.g. the equalization choice)."""
    out = {f"a/{k}": np.asarray(v) for k, v in arrays.items()}
    out["meta"] = np.frombuffer(json.dumps(meta | {"format": FORMAT}).encode(), dtype=np.uint8)
    _write_npz(path, out)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda fh: np.savez(fh, **arrays))  # type: ignore[arg-type]


def load_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    return _read(path, lambda z, meta: ({k[2:]: z[k] for k in z.files if k.startswith("a/")}, meta))
