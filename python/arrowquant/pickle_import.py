"""PyTorch pickle checkpoints (.ckpt/.bin/.pt/.pth), only when the user asks (--allow-pickle).

A pickle can run code when loaded, so model files in that format are refused by default; with
allow_pickle they go through ``torch.load(weights_only=True)`` - PyTorch's restricted unpickler,
which only rebuilds tensors and plain containers - and are written as a temporary safetensors file
that the C++ reader then treats like any other input.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from arrowquant.errors import MalformedModelError

PICKLE_SUFFIXES = (".ckpt", ".bin", ".pt", ".pth")


def is_pickle_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix in PICKLE_SUFFIXES and Path(path).is_file()


def _tensors(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    import torch

    if isinstance(obj, torch.Tensor):
        out[prefix.rstrip(".")] = obj.detach().contiguous().clone()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _tensors(v, f"{prefix}{k}.", out)


def convert_pickle(path: str | os.PathLike[str], folder: Path) -> Path:
    """Loads `path` with weights_only=True and writes folder/model.safetensors."""
    import pickle

    import torch
    from safetensors.torch import save_file

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MalformedModelError(
            f"{path}: not loadable with torch.load(weights_only=True): {first}"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    tensors: dict[str, Any] = {}
    _tensors(obj, "", tensors)
    if not tensors:
        raise MalformedModelError(f"{path}: holds no tensors")
    out = folder / "model.safetensors"
    save_file(tensors, str(out))
    return out
