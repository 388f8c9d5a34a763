"""GGUF interop (docs/interop.md): checkpoints exported to GGUF files whose blocks (Q8_0 ...
Q2_K) hold codes chosen by ArrowQuant's search, and GGUF files read back (inspect, validate,
eval, load_state_dict). The encoding, decoding and the container are C++ (arrowquant._core);
this module plans the per-tensor types and names and writes the report."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

import arrowquant._core as _core
from arrowquant import single_file
from arrowquant.errors import ConfigurationError

GGUF_FILE = "model.gguf"
NAME_STYLES = ("diffusers", "sdcpp")
# Block types by the width the profiles and rules give a tensor.
WIDTH_TYPES = {8: "Q8_0", 6: "Q6_K", 5: "Q5_K", 4: "Q4_K", 3: "Q3_K", 2: "Q2_K"}
# Where a tensor's last dimension does not fill the type's blocks (K-quants: 256 values), the
# nearest type of at least as many bits with blocks of 32 (as llama.cpp's quantizer falls back),
# then F16.
FALLBACK = {
    "Q2_K": "Q4_0",
    "Q3_K": "Q4_0",
    "Q4_K": "Q5_0",
    "Q5_K": "Q5_0",
    "Q6_K": "Q8_0",
    "Q4_0": "F16",
    "Q5_0": "F16",
    "Q8_0": "F16",
}
KEPT_TYPES = {"F32": "F32", "F16": "F16", "BF16": "BF16"}


def types() -> dict[str, dict[str, Any]]:
    """The block types encoded here: name -> ggml type number, block values, block bytes,
    bits per weight."""
    return {
        name: {"id": i, "block": block, "bytes": nbytes, "bits_per_weight": bpw}
        for name, i, block, nbytes, bpw in _core.gguf_types()
    }


def check_type(name: str) -> str:
    """The canonical spelling of a block type name, or a ConfigurationError listing them."""
    up = name.upper()
    if up not in types() or up in KEPT_TYPES:
        quant = [t for t in types() if t not in KEPT_TYPES]
        raise ConfigurationError(f"--gguf-type {name!r}: must be one of {', '.join(quant)}")
    return up


def _fitting(qtype: str, ne0: int) -> tuple[str, list[str]]:
    """qtype, or its fallbacks until one's blocks fit a last dimension of ne0; and why."""
    notes = []
    while qtype not in KEPT_TYPES and not _core.gguf_fits(qtype, ne0):
        nxt = FALLBACK[qtype]
        block = types()[qtype]["block"]
        notes.append(f"{qtype}: last dimension {ne0} is not a multiple of {block} -> {nxt}")
        qtype = nxt
    return qtype, notes


def plan(
    model_path: str | os.PathLike[str],
    core_config: Any,
    gguf_type: str,
    target_bits: int,
    keep_dtype: str = "F16",
    names: str = "diffusers",
) -> list[dict[str, Any]]:
    """Per tensor: its name and file in the output (`names`), and its GGUF type by the job's
    selection rules (the same plan as the Parquet output: a tensor at the target width takes
    `gguf_type`, a wider one the type of its width, kept ones their float dtype), with GGUF's
    block constraint applied per tensor to the shape it is stored with."""
    from arrowquant.checkpoint import load_checkpoint

    if names not in NAME_STYLES:
        raise ConfigurationError(f"--gguf-names {names!r}: must be one of {', '.join(NAME_STYLES)}")
    ck = load_checkpoint(str(model_path))
    rows: list[dict[str, Any]] = []
    for name, bits, _threshold, why in _core.plan(str(model_path), core_config):
        info = ck.info(name)
        # A pipeline's component has its own file; a single file's components stay in one.
        folder = bool(info.component) and name.startswith(info.component + "/")
        rows.append(
            {
                "source": name,
                "component": info.component,
                "name": name.split("/", 1)[1] if folder else name,
                "file": f"{info.component}.gguf" if folder else GGUF_FILE,
                "shape": list(info.shape),
                "stored_shape": list(info.shape),
                "dtype": info.dtype,
                "bits": bits,
                "why": why,
                "notes": [],
            }
        )
    if names == "sdcpp":
        _ldm_names(ck, rows)
    for row in rows:
        ne0 = row["stored_shape"][-1] if row["stored_shape"] else 1
        if row["dtype"] not in KEPT_TYPES:
            row["type"] = None
            row["why"] = f"{row['dtype']} tensor: GGUF export stores float tensors only; left out"
        elif row["bits"] == 0:
            # Kept as the job keeps tensors (keep_dtype), 1-D ones (norms, biases) as they are.
            row["type"] = KEPT_TYPES[keep_dtype if len(row["shape"]) > 1 else row["dtype"]]
        else:
            want = gguf_type if row["bits"] == target_bits else WIDTH_TYPES.get(row["bits"], "Q8_0")
            row["type"], row["notes"] = _fitting(want, ne0)
    return rows


def _ldm_names(ck: Any, rows: list[dict[str, Any]]) -> None:
    """--gguf-names sdcpp: every component into one model.gguf under its original (LDM) name,
    as stable-diffusion.cpp reads single files (arrowquant.ldm_names)."""
    from arrowquant import ldm_names

    comps = {c["name"]: c for c in ck.components}
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["component"], []).append(r)
    for comp, group in by.items():
        c = comps.get(comp)
        cls = c["class_name"] if c else ""
        config = json.loads(c["config_json"]) if c and c["config_json"] else {}
        inner = [r["name"] for r in group]
        mapping = ldm_names.for_class(cls, inner, config)
        if mapping is None and all(n.startswith(ldm_names.PREFIXES) for n in inner):
            mapping = {n: n for n in inner}  # already an original-layout checkpoint
        if mapping is None:
            raise ConfigurationError(
                f"--gguf-names sdcpp: no original (LDM) names for {comp or ck.path} "
                f"({cls or 'unknown class'}); names are known for " + ", ".join(ldm_names.CLASSES)
            )
        for r in group:
            r["name"] = mapping[r["name"]]
            r["file"] = GGUF_FILE
            if cls == "AutoencoderKL":
                r["stored_shape"] = ldm_names.vae_shape(r["name"], r["shape"])


def metadata(
    recipe: Any, model_path: str | os.PathLike[str], component: str, names: str | None
) -> list[tuple[str, int, str]]:
    """The file's key/values: what GGUF readers look for, then ArrowQuant's provenance."""
    from arrowquant import __version__

    src = Path(model_path)
    kv: list[tuple[str, int, str]] = [
        ("general.architecture", 8, json.dumps("diffusers")),
        ("general.name", 8, json.dumps(component or src.stem)),
        ("general.quantization_version", 4, "2"),
        ("arrowquant.tool_version", 8, json.dumps(f"arrowquant {__version__}")),
        ("arrowquant.recipe", 8, json.dumps(json.dumps(recipe))),
        ("arrowquant.source", 8, json.dumps(str(model_path))),
    ]
    if names is not None:
        kv.append(("arrowquant.names", 8, json.dumps(names)))
    config = src / component / "config.json" if src.is_dir() else None
    if config is not None and config.is_file():
        kv.append(("diffusers.config", 8, json.dumps(config.read_text())))
    return kv


def export(
    model_path: str | os.PathLike[str],
    out_dir: Path,
    rows: list[dict[str, Any]],
    recipe: dict[str, Any],
    method: str,
    threads: int,
    names: str = "diffusers",
    progress: Callable[[int, int, str], Any] | None = None,
    moments: dict[str, Any] | None = None,
    damp: float = 0.01,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Writes the planned files into out_dir (diffusers names: model.gguf for a lone model,
    COMPONENT.gguf per pipeline component; sdcpp: one model.gguf); returns the report's layer
    rows and the files written. `moments` ({source: (fit, held-out or None)}): those tensors'
    codes by GPTQ where a row of the stored shape is the layer's input (the last dimension is
    H's), validated on the held-out output error."""
    moments = moments or {}
    by_file: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_file.setdefault(r["file"], []).append(r)
    layers: list[dict[str, Any]] = []
    for fname, group in by_file.items():
        stored = [r for r in group if r["type"] is not None]
        component = fname[: -len(".gguf")] if fname != GGUF_FILE else ""
        out = _core.export_gguf(
            str(model_path),
            str(out_dir / fname),
            [(r["source"], r["name"], r["type"], r["stored_shape"]) for r in stored],
            metadata(recipe, model_path, component, names)
            + [("arrowquant.source_names", 9, json.dumps([r["source"] for r in stored]))],
            method,
            threads,
            progress,
            {
                r["source"]: moments[r["source"]]
                for r in stored
                if r["source"] in moments
                and r["type"] not in KEPT_TYPES
                and moments[r["source"]][0].dim == r["stored_shape"][-1]
            },
            damp,
        )
        done = {o["source"]: o for o in out}
        for r in group:
            o = done.get(r["source"])
            quantized = r["type"] is not None and r["type"] not in KEPT_TYPES
            layers.append(
                {
                    "name": r["source"],
                    "gguf_name": r["name"],
                    "shape": r["shape"],
                    "source_dtype": r["dtype"],
                    "action": "quantized" if quantized else ("kept" if o else "left out"),
                    "format": r["type"] or r["dtype"],
                    "bits": types()[r["type"]]["bits_per_weight"] if r["type"] else 0,
                    "why": r["why"],
                    "fallbacks": r["notes"],
                    "method": ("gptq" if o and o["gptq"] else method) if quantized else "",
                    "validation": "output" if o and o["output_error"] is not None else "weight",
                    "output_error": o["output_error"] if o else None,
                    "source_bytes": o["source_bytes"] if o else 0,
                    "stored_bytes": o["stored_bytes"] if o else 0,
                    "metrics": o["metrics"] if o and quantized else None,
                }
            )
    return layers, list(by_file)


def export_model(
    model: str | os.PathLike[str], dest: str | os.PathLike[str]
) -> list[dict[str, Any]]:
    """An ArrowQuant model file (or output folder) as a GGUF file, without requantizing: formats
    whose codes are a GGUF type's (int8-sym-g32-f16 -> Q8_0, int4-sym-g32-f16 -> Q4_0,
    int4-asym-g32-q6 -> Q4_K), kept tensors as stored; an error naming the first tensor that does
    not map, with nothing written. Names as stored in the model file."""
    from arrowquant.model import open as open_model
    from arrowquant.model import resolve_model_path

    src = resolve_model_path(model)
    recipe = open_model(src).metadata.get("arrowquant.recipe", {})
    kv = metadata(recipe, src, "", names=None)
    return list(_core.export_model_gguf(str(src), os.fspath(dest), kv))


class GgufModel:
    """GGUF output opened for reading: one .gguf file, or the output folder of a pipeline (one
    COMPONENT.gguf each, their tensors named "COMPONENT/name" here). Memory-mapped and validated
    on open; nothing is decoded until asked."""

    def __init__(self, path: Path, files: list[tuple[str, Any]], source_names: bool) -> None:
        self._path = path
        self._files = files
        self._where: dict[str, tuple[Any, str, dict[str, Any]]] = {}
        for prefix, core in files:
            tensors = core.tensors
            # An output folder lists its tensors under the names of the checkpoint they came
            # from (ArrowQuant's files record them, whatever --gguf-names), so validate, eval
            # and load_state_dict find them; a file opened on its own, under its own names.
            meta = {k: v for k, _t, v in core.metadata}
            source = (
                json.loads(meta.get("arrowquant.source_names", "null")) if source_names else None
            )
            if not (isinstance(source, list) and len(source) == len(tensors)):
                source = [prefix + t["name"] for t in tensors]
            for name, t in zip(source, tensors, strict=True):
                self._where[name] = (core, t["name"], t)

    @property
    def path(self) -> str:
        return str(self._path)

    @property
    def legacy(self) -> bool:
        return False

    @property
    def file_bytes(self) -> int:
        return sum(Path(core.path).stat().st_size for _, core in self._files)

    @property
    def metadata(self) -> dict[str, Any]:
        meta = {k: json.loads(v) for k, _t, v in self._files[0][1].metadata}
        meta.setdefault("arrowquant.format_version", f"GGUF v{self._files[0][1].version}")
        return meta

    def names(self) -> list[str]:
        return list(self._where)

    def info(self, name: str) -> dict[str, Any]:
        t = dict(self._where[name][2])
        t["name"] = name
        quantized = t["type"] not in KEPT_TYPES
        t["quant_type"] = t["type"] if quantized else "raw"
        t["dtype"] = t["type"]
        t["spec"] = {"format": f"gguf {t['type']}"} if quantized else None
        t["metrics"] = None
        return t

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as stored (ggml blocks)."""
        core, inner, _ = self._where[name]
        return np.asarray(core.raw(inner))

    def dequantize(self, name: str, threads: int | None = None) -> np.ndarray:
        """The tensor as float32, decoded with ggml's arithmetic."""
        from arrowquant.quantize import _default_threads

        core, inner, _ = self._where[name]
        return np.asarray(core.decode(inner, threads or _default_threads()))

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __repr__(self) -> str:
        return f"GgufModel({self.path!r}, tensors={len(self)})"


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """A .gguf file, or an output folder holding GGUF files and no Parquet model."""
    p = Path(path)
    if p.suffix == ".gguf":
        return True
    return p.is_dir() and any(p.glob("*.gguf")) and not any(p.glob("*.aq.parquet"))


def open_gguf(path: str | os.PathLike[str]) -> GgufModel:
    """A .gguf file (its tensors under the file's names) or an ArrowQuant GGUF output folder
    (under the checkpoint's names)."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.gguf"))
        lone = [f for f in found if f.name == GGUF_FILE]
        files = [("", _core.GgufFile.open(str(f))) for f in lone] or [
            (f"{f.stem}/", _core.GgufFile.open(str(f))) for f in found
        ]
        return GgufModel(p, files, source_names=True)
    return GgufModel(p, [("", _core.GgufFile.open(os.fspath(p)))], source_names=False)


def convert_gguf(path: str | os.PathLike[str], folder: Path) -> Path:
    """A GGUF file as folder/model.safetensors for the quantizing job: every tensor under its
    name in the file, block types decoded with ggml's arithmetic to float32, F16/F32 as stored
    (BF16 as float32)."""
    import safetensors.numpy

    model = open_gguf(path)
    tensors: dict[str, np.ndarray] = {}
    for name in model.names():
        if model.info(name)["type"] == "F16":
            tensors[name] = model.raw(name).view(np.float16).reshape(model.info(name)["shape"])
        else:
            tensors[name] = model.dequantize(name)
    out = folder / "model.safetensors"
    safetensors.numpy.save_file(tensors, str(out), metadata={"arrowquant.source": str(path)})
    return out


def load_state_dict(
    path: str | os.PathLike[str], dtype: Any, threads: int | None, out: Any
) -> dict[str, Any]:
    """model.load_state_dict for GGUF: every tensor decoded (into `out`'s tensors where named)."""
    import torch

    model = open_gguf(path)
    result: dict[str, Any] = {}
    for name in model.names():
        a = torch.from_numpy(model.dequantize(name, threads))
        dst = None if out is None else out.get(name)
        if dst is not None:
            with torch.no_grad():
                dst.copy_(a.reshape(dst.shape))
            result[name] = dst
        else:
            result[name] = a.to(dtype)
    return result


def quantize_job(
    model_path: str | os.PathLike[str],
    out: Path,
    tmp: Path,
    cfg: Any,
    progress: Callable[[int, int, str], Any] | None,
    t0: float,
) -> Any:
    """`ArrowQuantV2.quantize` with output_format "gguf": the plan of the Parquet job (profile,
    rules, per-component profiles), weight-only, each tensor's codes from the search (or
    min/max) in its GGUF type. Returns the QuantizationReport (written by the caller)."""
    import resource
    import time

    from arrowquant import __version__
    from arrowquant.api import component_profiles, set_components
    from arrowquant.report import QuantizationReport

    gguf_type = check_type(cfg.gguf_type) if cfg.gguf_type else WIDTH_TYPES[cfg.bits]
    cfg, path = resolve_calibration(model_path, cfg)
    recipe: dict[str, Any] = {
        "config": cfg.recipe(),
        "tool": f"arrowquant {__version__}",
        "path": path,
        "gguf_type": gguf_type,
    }
    moments: dict[str, Any] = {}
    built: single_file.Built | None = None
    sampled: str | os.PathLike[str] = model_path  # what calibration samples
    with contextlib.ExitStack() as stack:  # a single file's built pipeline, while it is used
        if path["path"] == "calibrated":
            if single_file.naming(model_path) is not None:
                built = stack.enter_context(single_file.built(model_path, cfg.model_config))
                sampled = built.folder
            moments, recipe["calibration"] = _calibrate(sampled, cfg)
            if built is not None:
                moments = built.to_file(moments)
                recipe["calibration"]["single_file"] = built.summary
        profiles = component_profiles(model_path, cfg)
        if profiles:
            recipe["components"] = profiles
        core = cfg.to_core(json.dumps(recipe))
        set_components(core, cfg, profiles, calibrated=False)
        rows = plan(model_path, core, gguf_type, cfg.bits, cfg.keep_dtype, cfg.gguf_names)
        method = cfg.method or "search"
        layers, files = export(
            model_path,
            tmp,
            rows,
            recipe,
            method,
            core.threads,
            cfg.gguf_names,
            progress,
            moments,
            cfg.gptq_damp,
        )
        if path["path"] == "calibrated":
            recipe["calibration"].update(_whole_model_check(sampled, tmp, cfg, built))
    modality, reason = (
        (cfg.modality, "given") if cfg.modality else _core.detect_modality(str(model_path))
    )
    params = [int(np.prod(r["shape"])) for r in layers]
    return QuantizationReport(
        model_path=str(model_path),
        output_path=str(out),
        modality=modality,
        modality_reason=reason,
        config=cfg.to_dict(),
        layers=layers,
        source_bytes=sum(r["source_bytes"] for r in layers),
        stored_bytes=sum(r["stored_bytes"] for r in layers),
        file_bytes=sum((tmp / f).stat().st_size for f in files),
        quantized_params=sum(
            p for p, r in zip(params, layers, strict=True) if r["action"] == "quantized"
        ),
        total_params=sum(
            p for p, r in zip(params, layers, strict=True) if r["action"] != "left out"
        ),
        threshold_missed=False,
        seconds=time.perf_counter() - t0,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        extra={"path": path, "gguf": {"type": gguf_type, "names": cfg.gguf_names, "files": files}}
        | ({"component_profiles": profiles} if profiles else {})
        | ({"calibration": recipe["calibration"]} if "calibration" in recipe else {}),
    )


def resolve_calibration(model_path: str | os.PathLike[str], cfg: Any) -> tuple[Any, dict[str, str]]:
    """Whether the GGUF job calibrates: as the Parquet job decides (a model the tool can sample,
    or calibration data given), and only for GPTQ: GGUF runtimes compute activations in float,
    so the file holds weights alone and calibration's only use is choosing their codes."""
    import dataclasses

    from arrowquant.api import resolve_calibration as resolve

    if not cfg.gptq:
        return dataclasses.replace(cfg, calibration=""), {
            "path": "weight-only",
            "why": "GGUF output with --no-gptq: codes fitted to the weights (GGUF runtimes "
            "compute activations in float, so activation calibration has no use)",
        }
    cfg, path = resolve(model_path, cfg)
    if path["path"] == "calibrated":
        path = {
            "path": "calibrated",
            "why": f"{path['why']}; GPTQ on each layer's input second moments chooses the codes "
            "(GGUF runtimes compute activations in float: no activation parameters stored)",
        }
    return cfg, path


def _whole_model_check(
    model_path: str | os.PathLike[str], out: Path, cfg: Any, built: Any = None
) -> dict[str, Any]:
    """The calibrated job's whole-model check on the GGUF files just written, as for Parquet
    output: the one-step prediction error on fresh FP trajectories (NLL for a masked LM).
    `built`: a single file's built pipeline (single_file.Built), if it was made from one."""
    from arrowquant.masked_diffusion import is_masked_lm

    if is_masked_lm(model_path):
        from arrowquant.calibration.masked import nll_check

        return {"nll_check": nll_check(model_path, out, cfg)}
    from arrowquant.calibration.check import one_step_check

    return {"one_step_check": one_step_check(model_path, out, cfg, built)}


def _calibrate(model_path: str | os.PathLike[str], cfg: Any) -> tuple[dict[str, Any], Any]:
    """{weight name: (fit, held-out)} input second moments from the FP model's calibration run
    (inputs as the model sees them: no equalization, which a GGUF runtime would not apply), and
    the calibration summary for the recipe."""
    import dataclasses

    from arrowquant.calibration import calibrate

    moments: dict[str, Any] = {}
    _plans, summary = calibrate(
        model_path, dataclasses.replace(cfg, equalize=False), moments=moments
    )
    held_out = {k: (f, c if c.count else None) for k, (f, c) in moments.items()}
    return held_out, summary
