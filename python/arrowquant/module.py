"""Quantizing any PyTorch module with the user's own sampling loop as calibration.

    report = arrowquant.quantize_module(model, "OUT", profile="local", calibrate=run)

`run(model)` is called once; every forward of every nn.Linear / nn.Conv2d during it is recorded
(activation statistics per timestep and the layers' input second moments), the timestep being
read from a `timestep` / `timesteps` / `t` argument of the module's forward, or set with
`arrowquant.torch.timestep(t)`. Then the weights go through the same C++ pipeline as a
checkpoint file would (GPTQ on the recorded second moments, validation, fallback), and
`OUT/model.aq.parquet` holds them under their `module.state_dict()` names.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from arrowquant._memory import release_freed
from arrowquant.config import DiffusionQuantConfig
from arrowquant.errors import ConfigurationError
from arrowquant.report import QuantizationReport

# Without a scheduler config, timesteps are taken as DDPM's 0..999 (continuous times in (0, 1)
# are mapped there, see arrowquant.torch.timestep_value).
NUM_TRAIN_TIMESTEPS = 1000


# torch dtype name -> safetensors dtype.
_ST_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
}


def _state_file(module: Any, folder: Path) -> Path:
    """The module's state dict as one safetensors file, streamed tensor by tensor: a big
    model's weights are never held twice (safetensors.torch.save_file would first copy every
    tensor to bytes). Tied tensors are written once per name."""
    import json

    import torch

    state = {k: v for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}
    header: dict[str, Any] = {}
    offset = 0
    for k, v in state.items():
        dtype = _ST_DTYPES.get(str(v.dtype).removeprefix("torch."))
        if dtype is None:
            raise ConfigurationError(
                f"quantize_module: state dict entry '{k}' has dtype {v.dtype}, "
                "which a safetensors file cannot hold"
            )
        n = v.numel() * v.element_size()
        header[k] = {"dtype": dtype, "shape": list(v.shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    path = folder / "module.safetensors"
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for v in state.values():
            if v.numel():
                t = v.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
                f.write(t.numpy().data)
    return path


@contextlib.contextmanager
def _spilled(moments: dict[str, Any], enabled: bool) -> Iterator[None]:
    """Within the block, `moments` ({name: (fit, held-out) SecondMoments}) lives in a scratch
    file instead of memory, written and read back one matrix at a time."""
    if not enabled or not moments:
        yield
        return
    import numpy as np

    import arrowquant._core as _core

    with tempfile.TemporaryFile(prefix="aq-moments-") as f:
        layout = []
        for name in list(moments):
            parts = []
            for h in moments.pop(name):
                data = h.data()
                data.tofile(f)
                parts.append((h.dim, h.block if h.block < h.dim else 0, h.count, data.size))
                del data, h
            layout.append((name, parts))
        release_freed()
        try:
            yield
        finally:
            f.seek(0)
            for name, parts in layout:
                restored = []
                for dim, block, count, size in parts:
                    h = _core.SecondMoments.make(dim, block)
                    h.restore(np.fromfile(f, dtype=np.float64, count=size), count)
                    restored.append(h)
                moments[name] = (restored[0], restored[1])


def record(
    module: Any,
    run: Callable[[Any], Any],
    cfg: DiffusionQuantConfig,
    moments: dict[str, Any],
    sensitivity: dict[str, Any],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(activation plans, summary): runs `run(module)` once with every Linear / Conv2d recorded,
    filling `moments` ({weight name: (fit, held-out)}) when cfg.gptq, and `sensitivity` (each
    layer's, from replaying a sample of the module's recorded calls) when also cfg.allocate."""
    import torch

    from arrowquant.calibration import fit_plans, moments_summary, recording_summary
    from arrowquant.calibration import sensitivity as sens
    from arrowquant.calibration.capture import Recorder, moments_cap_bytes
    from arrowquant.torch import TimestepTracker

    t0 = time.perf_counter()
    tracker = TimestepTracker(module)
    rec = Recorder(
        module,
        lambda n: f"{n}.weight",
        tracker.state,
        cfg.seed,
        moments=moments if cfg.gptq else None,
        threads=cfg.threads or (os.cpu_count() or 1),
        moments_cap=moments_cap_bytes(module, cfg.moments_memory_gb),
    )
    want_sens = cfg.gptq and cfg.allocate
    calls = sens.CallRecorder(module, seed=cfg.seed) if want_sens else None
    try:
        with torch.no_grad():
            run(module)
    finally:
        rec.remove()
        tracker.remove()
        if calls is not None:
            calls.remove()
    if not rec.collectors:
        raise ConfigurationError(
            "calibrate: the run never called a Linear or Conv2d of the module "
            "(did it run the module passed to quantize_module?)"
        )
    plans = fit_plans(
        rec.collectors,
        rec.collectors,
        None,
        {},
        cfg.time_groups,
        cfg.adaptive_groups,
        cfg.act_bits,
        cfg.act_clip,
        NUM_TRAIN_TIMESTEPS,
        cfg.activation_stats,
    )
    summary: dict[str, Any] = {
        "source": "calibrate callable",
        "rows": 0,
        "kind": "the caller's sampling loop",
    }
    release_freed()  # the sampler's freed activations, before H and the replay's graph
    sens_summary = None
    if calls is not None and calls.calls:
        # A big model's H waits on disk while its replay builds autograd graphs: the two
        # together, on top of the model, are what bounded the peak memory.
        with _spilled(moments, enabled=sens.big_model(module)):
            values, sens_summary = sens.measure(
                module, calls.calls, lambda n: f"{n}.weight", seed=cfg.seed
            )
        sensitivity.update(values)
        release_freed()
    sampler = getattr(run, "__qualname__", type(run).__name__)
    summary |= recording_summary(module, sampler, rec.collectors, plans, cfg)
    summary |= {
        "equalize": False,
        "equalized_layers": 0,
        "second_moments": moments_summary(moments),
        "sensitivity": sens_summary,
        "cache": "none",
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if summary["timesteps"] == [-1]:
        summary["timesteps_note"] = "no timestep seen: one activation group for all calls"
    return plans, summary


def quantize_module(
    module: Any,
    out: str | os.PathLike[str],
    *,
    profile: str = "local",
    calibrate: Callable[[Any], Any] | None = None,
    **config: Any,
) -> QuantizationReport:
    """Quantizes `module`'s weights into `out/` (model.aq.parquet and the report), tensor names
    equal to `module.state_dict()` keys. `calibrate=run`: `run(module)` is the caller's own
    sampling loop, called once and recorded (see the module docstring); None: weight only.
    `config`: any DiffusionQuantConfig field (`bits`, `target_bpw`, `gptq`, ...)."""
    from arrowquant.api import ArrowQuantV2

    if "calibration" in config:
        raise ConfigurationError("quantize_module: pass calibrate=run, not calibration=...")
    cfg = DiffusionQuantConfig.resolve(profile=profile, **config)
    out_path = Path(out)
    with tempfile.TemporaryDirectory(prefix="aq-module-") as tmp:
        source = _state_file(module, Path(tmp))
        precomputed = None
        if calibrate is not None:
            moments: dict[str, Any] = {}
            sensitivity: dict[str, Any] = {}
            plans, summary = record(module, calibrate, cfg, moments, sensitivity)
            precomputed = (plans, summary, moments, sensitivity)
        return ArrowQuantV2().quantize_diffusion_model(
            source, out_path, cfg, overwrite=True, _calibration=precomputed
        )
