"""The quantized model file (Extended Parquet V2): open it, load it into PyTorch, export it.

model = arrowquant.open("model.aq.parquet")       # lazy: reads names and metadata only
model.names(); model.metadata; model.tensor(name) # QuantizedTensor
sd = arrowquant.load_state_dict(path, dtype=torch.float16)
arrowquant.export_safetensors(path, "model.safetensors", dtype="float16")
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

import arrowquant._core as _core
from arrowquant.dtypes import QUANTIZABLE, as_dtype, core_name, float_core_name
from arrowquant.errors import ConfigurationError
from arrowquant.quantize import QuantizedTensor, _as_array, _default_threads


def _core_dtype(dtype: Any) -> str:
    return float_core_name(dtype, "dtype")


class QuantizedModel:
    """A model file opened for reading. Tensors are read on demand."""

    def __init__(self, core: _core.ModelReader) -> None:
        self._core = core
        self._infos = {d["name"]: d for d in core.tensors()}

    @property
    def path(self) -> str:
        return self._core.path

    @property
    def files(self) -> list[str]:
        """The files read: the model file, or a Parquet dataset's files in order."""
        return list(self._core.files)

    @property
    def legacy(self) -> bool:
        """True for files in the seed project's base V2 schema."""
        return self._core.legacy

    @property
    def metadata(self) -> dict[str, Any]:
        """Footer key/values; JSON values (recipe, source, totals) are decoded."""
        out: dict[str, Any] = {}
        for k, v in self._core.metadata.items():
            try:
                out[k] = json.loads(v) if v[:1] in "{[" else v
            except json.JSONDecodeError:
                out[k] = v
        return out

    def names(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> dict[str, Any]:
        return dict(self._infos[name]) if name in self._infos else self._missing(name)

    def tensor(self, name: str) -> QuantizedTensor:
        return QuantizedTensor(self._core.read_quantized(name))

    def raw(self, name: str) -> np.ndarray:
        """An unquantized tensor as stored (bf16 and f8 as ml_dtypes arrays)."""
        return as_dtype(np.asarray(self._core.read_raw(name)), self._infos[name]["dtype"])

    def dequantize(
        self, name: str, dtype: Any = np.float32, threads: int | None = None
    ) -> np.ndarray:
        return self.load([name], dtype, threads)[0]

    def load(
        self, names: list[str], dtype: Any = np.float16, threads: int | None = None
    ) -> list[np.ndarray]:
        """Dequantizes `names` in parallel in C++; integer tensors keep their dtype."""
        want = _core_dtype(
            np.dtype(dtype).name
            if not isinstance(dtype, str) and "torch" not in str(dtype)
            else dtype
        )
        arrays = self._core.load(list(names), want, threads or _default_threads())
        return [
            as_dtype(a, want) if a.dtype == np.uint16 else a  # integer tensors keep theirs
            for a in arrays
        ]

    def _missing(self, name: str) -> Any:
        from arrowquant.errors import ModelNotFoundError

        raise ModelNotFoundError(f"{self.path}: no tensor named '{name}'", "NotFound")

    def __len__(self) -> int:
        return len(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __iter__(self) -> Iterator[str]:
        return iter(self._infos)

    def __repr__(self) -> str:
        return f"QuantizedModel({self.path!r}, tensors={len(self)})"


def resolve_model_path(path: str | os.PathLike[str]) -> Path:
    """The model of `path`: the file itself, a Parquet dataset's folder, or model.aq.parquet (a
    file or a dataset folder) in the output folder of `arrowquant quantize`
    (ModelNotFoundError when there is none). The C++ reader resolves
    paths with the same function, so every entry point accepts either. GGUF: the .gguf file, or
    the output folder itself (its files' tensors under the checkpoint's names)."""
    from arrowquant.gguf import is_gguf

    if is_gguf(path):
        return Path(path)
    return Path(_core.resolve_model_path(os.fspath(path)))


def file_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the model file(s) at `path` (every file of a Parquet dataset, every .gguf of a
    GGUF output folder)."""
    p = resolve_model_path(path)
    if not p.is_dir():
        return p.stat().st_size
    if any(p.glob("*.gguf")):
        return sum(f.stat().st_size for f in p.glob("*.gguf"))
    return sum(os.path.getsize(f) for f in open(p).files)


def open(path: str | os.PathLike[str], verify_checksums: bool = True) -> Any:  # noqa: A001
    """Opens a model file, a Parquet dataset's folder, or the output folder of `arrowquant
    quantize` (validates footer, schema and version; reads no payload); GGUF output as an
    arrowquant.gguf.GgufModel."""
    from arrowquant.gguf import is_gguf, open_gguf

    if is_gguf(path):
        return open_gguf(path)
    return QuantizedModel(_core.ModelReader.open(os.fspath(path), verify_checksums))


def load_state_dict(
    path: str | os.PathLike[str],
    dtype: Any = None,
    threads: int | None = None,
    out: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Every tensor as a torch tensor with its original name and shape (default float16).

    With `out` (e.g. ``module.state_dict()``), float tensors named in it are dequantized straight
    into those existing CPU tensors, in their dtype, without allocating new ones; the returned
    dict holds them too.
    """
    import gc

    import torch

    dtype = torch.float16 if dtype is None else dtype
    from arrowquant.gguf import is_gguf

    if is_gguf(path):
        from arrowquant.gguf import load_state_dict as load_gguf

        return load_gguf(path, dtype, threads, out)
    model = open(path)
    # Hundreds of new arrays in a row would trigger full collections for nothing.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _load(model, dtype, threads, out)
    finally:
        if gc_was_enabled:
            gc.enable()


def _load(
    model: QuantizedModel, dtype: Any, threads: int | None, out: Mapping[str, Any] | None
) -> dict[str, Any]:
    import torch

    want = _core_dtype(dtype)
    names = model.names()
    result: dict[str, Any] = {}
    if out is not None:
        groups: dict[str, tuple[list[str], list[np.ndarray]]] = {}
        for name in names:
            dst = out.get(name)
            if dst is None or dst.device.type != "cpu" or not dst.is_contiguous():
                continue
            key = core_name(dst.dtype)
            if key not in QUANTIZABLE:
                continue
            view = (
                dst.detach().view(torch.int16).numpy()
                if dst.dtype == torch.bfloat16
                else dst.detach().numpy()
            )
            groups.setdefault(key, ([], []))[0].append(name)
            groups[key][1].append(view)
            result[name] = dst
        for key, (ns, views) in groups.items():
            model._core.load_into(ns, views, key, threads or _default_threads())
        names = [n for n in names if n not in result]
    arrays = model._core.load(names, want, threads or _default_threads())
    for name, a in zip(names, arrays, strict=True):
        if want == "BF16" and a.dtype == np.uint16:
            result[name] = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
        else:
            result[name] = torch.from_numpy(a)
    return result


def export_safetensors(
    path: str | os.PathLike[str], dest: str | os.PathLike[str], dtype: Any = "float16"
) -> None:
    """Writes the dequantized model as a .safetensors file (temporary name, then rename)."""
    import safetensors.torch

    sd = load_state_dict(path, dtype=dtype)
    dest = Path(dest)
    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    try:
        safetensors.torch.save_file(sd, str(tmp), metadata={"arrowquant.source": str(path)})
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def save(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Any],
    *,
    recipe: Mapping[str, Any] | None = None,
    source: Mapping[str, Any] | None = None,
    modality: str = "",
    components: Mapping[str, str] | None = None,
    metrics: Mapping[str, Mapping[str, float]] | None = None,
    max_chunk_bytes: int = 1 << 30,
) -> None:
    """Writes QuantizedTensors (and arrays kept as they are) to a model file."""
    from arrowquant import __version__

    w = _core.ModelWriter.open(
        str(path),
        __version__,
        json.dumps(dict(recipe or {})),
        json.dumps(dict(source or {})),
        modality,
        True,
        {},
        max_chunk_bytes,
    )
    try:
        for name, t in tensors.items():
            comp = (components or {}).get(name, "")
            if isinstance(t, QuantizedTensor):
                w.write_quantized(name, comp, t._core, (metrics or {}).get(name))
            else:
                arr, core = _raw_array(t)
                w.write_raw(name, comp, arr, core)
        w.close()
    except BaseException:
        w.abort()
        raise


def _raw_array(t: Any) -> tuple[np.ndarray, str]:
    try:
        return _as_array(t)
    except ConfigurationError:
        pass
    if type(t).__module__.startswith("torch"):
        t = t.detach().cpu().contiguous().numpy()
    a = np.ascontiguousarray(t)
    core = core_name(a.dtype)
    if core is None:
        raise ConfigurationError(f"cannot store dtype {a.dtype}")
    if a.dtype.isbuiltin == 2:  # an ml_dtypes float (f8): the core takes its bytes
        a = a.view(f"u{a.itemsize}")
    return a, core
