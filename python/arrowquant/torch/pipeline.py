"""`load_pipeline(quantized)`: a whole diffusers pipeline from a quantized pipeline folder in one
call, every component the file holds built without weights and filled from the file (packed by
default), the others (tokenizer, scheduler, components left out of the file) loaded from the
original folder as diffusers does."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arrowquant.torch.apply import ApplyReport, apply, empty_weights


def _source_folder(qm: Any, model: str | os.PathLike[str] | None) -> Path:
    from arrowquant.errors import ConfigurationError

    if model is not None:
        root = Path(model)
    else:
        src = (qm.metadata.get("arrowquant.source") or {}).get("path")
        if not src:
            raise ConfigurationError(
                f"{qm.path}: records no source folder; pass model= (the original pipeline folder)"
            )
        root = Path(src)
        if not root.is_absolute():
            # Recorded as the user typed it: relative to where quantize ran, or to the output.
            near = Path(qm.path).parent / root
            root = root if root.exists() else near
    if not (root / "model_index.json").is_file():
        raise ConfigurationError(
            f"{root}: not a diffusers pipeline folder (no model_index.json); load_pipeline needs "
            "the original folder for the configs, tokenizer and scheduler (model=)"
        )
    return root


def _empty_component(root: Path, name: str, library: str, cls_name: str) -> nn.Module:
    """The component's class built from its config with its parameters on the meta device."""
    import importlib

    cls = getattr(importlib.import_module(library), cls_name)
    folder = root / name
    with empty_weights():
        if library == "transformers":
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(folder, local_files_only=True)
            module = cls._from_config(config)
        else:
            module = cls.from_config(cls.load_config(folder, local_files_only=True))
    if not isinstance(module, nn.Module):
        raise TypeError(f"{folder}: {cls_name} is not a torch module")
    return module.eval()


def load_pipeline(
    quantized: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    pipeline_class: Any = None,
    dtype: torch.dtype | None = None,
    act_quant: bool = True,
    packed: bool = True,
    int8: bool | None = None,
) -> tuple[Any, dict[str, ApplyReport]]:
    """(pipeline, reports): the diffusers pipeline of `model` (default: the source folder the
    quantized file records) with every component the file holds loaded from it; see the module
    docstring. `dtype` converts the float tensors (packed bytes stay as they are); `int8` as
    for `apply`."""
    import arrowquant as aq

    qm = aq.open(quantized)
    root = _source_folder(qm, model)
    index = json.loads((root / "model_index.json").read_text())
    held = {n.split("/", 1)[0] for n in qm.names() if "/" in n}
    modules: dict[str, nn.Module] = {}
    for name, spec in index.items():
        if name.startswith("_") or name not in held or not isinstance(spec, list):
            continue
        library, cls_name = spec
        if library not in ("diffusers", "transformers") or cls_name is None:
            continue
        modules[name] = _empty_component(root, name, library, cls_name)
    reports = {
        name: apply(m, qm.path, act_quant, dtype, prefix=f"{name}/", packed=packed, int8=int8)
        for name, m in modules.items()
    }
    if pipeline_class is None:
        from diffusers import DiffusionPipeline

        pipeline_class = DiffusionPipeline
    pipe = pipeline_class.from_pretrained(root, local_files_only=True, **modules)
    if dtype is not None:
        pipe.to(dtype=dtype)
    return pipe, reports
