"""Reading checkpoints: one .safetensors file, a sharded index, or a (diffusers) model folder.

Arrays are zero-copy, read-only views of the memory-mapped files; each view keeps the mapping
alive, so they stay valid after the Checkpoint object is gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

import arrowquant._core as _core
from arrowquant.dtypes import as_dtype

_U64_MAX = 2**64 - 1


@dataclass(frozen=True)
class TensorInfo:
    name: str
    component: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    file: str
    offset: int  # byte offset of the tensor's data in `file`

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def _info(d: dict[str, Any]) -> TensorInfo:
    return TensorInfo(
        name=d["name"],
        component=d["component"],
        dtype=d["dtype"],
        shape=tuple(d["shape"]),
        nbytes=d["nbytes"],
        file=d["file"],
        offset=d["offset"],
    )


class Checkpoint:
    """A validated, memory-mapped model checkpoint."""

    def __init__(self, core: _core.Checkpoint) -> None:
        self._core = core
        self._infos = [_info(d) for d in core.tensors()]

    @property
    def path(self) -> str:
        return self._core.path

    @property
    def layout(self) -> str:
        """``single-file``, ``sharded`` or ``diffusers-pipeline``."""
        return self._core.layout

    @property
    def components(self) -> list[dict[str, Any]]:
        return self._core.components()

    @property
    def naming(self) -> dict[str, Any]:
        """How a lone model names its tensors: {"layout": "diffusers" | "ldm" | "ldm-sdxl" |
        "flux" | "sd3", "why": ..., "components": [{"name", "prefix", "kind"}]} (a single file
        of several components: each found by its prefix)."""
        return self._core.naming

    @property
    def total_bytes(self) -> int:
        return self._core.total_tensor_bytes

    def names(self) -> list[str]:
        return [i.name for i in self._infos]

    def infos(self) -> list[TensorInfo]:
        return list(self._infos)

    def info(self, name: str) -> TensorInfo:
        return _info(self._core.info(name))

    def numpy(self, name: str) -> np.ndarray:
        """Zero-copy read-only array with the tensor's dtype (bf16/f8 through ml_dtypes)."""
        return as_dtype(np.asarray(self._core.array(name)), self._core.info(name)["dtype"])

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes, zero-copy, as read-only uint8."""
        return np.asarray(self._core.raw(name))

    def metadata(self) -> dict[str, dict[str, str]]:
        """``__metadata__`` of every file, by path."""
        return {f["path"]: f["metadata"] for c in self.components for f in c["files"]}

    def write_tensor_table(self, path: str) -> None:
        """Writes every tensor unchanged as a Parquet table (V2 pages, format 2.6)."""
        self._core.write_tensor_table(path)

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._core

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return (
            f"Checkpoint({self.path!r}, layout={self.layout}, tensors={len(self)}, "
            f"bytes={self.total_bytes})"
        )


def load_checkpoint(
    path: str,
    *,
    max_header_bytes: int = 100_000_000,
    max_tensors: int = 10_000_000,
    max_tensor_bytes: int = _U64_MAX,
    max_total_bytes: int = _U64_MAX,
) -> Checkpoint:
    """Opens and validates a checkpoint; raises a typed ArrowQuantError on bad input."""
    core = _core.Checkpoint.open(
        str(path), max_header_bytes, max_tensors, max_tensor_bytes, max_total_bytes
    )
    return Checkpoint(core)
