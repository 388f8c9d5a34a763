"""Driving a diffusion model, shared by calibration and evaluation: load a diffusers denoiser (FP,
or with weights read from a quantized model file), draw seeded noise and labels, and run
deterministic DDIM sampling.

Pairing: every setting starts from the same noise and labels and runs the same deterministic
DDIM (eta = 0) schedule, so any difference in the samples comes from the weights alone.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arrowquant.errors import (
    ArrowQuantError,
    ModelNotFoundError,
    ShapeMismatchError,
    UnsupportedError,
)

PROBE_STEPS = 10

# Pixel-space denoisers the harness knows how to call: class name -> calling convention.
_KINDS = {"UNet2DModel": "unet", "DiTTransformer2DModel": "dit"}


@dataclass
class Denoiser:
    path: Path
    kind: str  # "unet" | "dit"
    component: str  # subfolder in a pipeline ("unet", "transformer"), "" for a bare model
    module: Any
    scheduler_config: dict[str, Any]
    num_classes: int  # 0: unconditional
    channels: int
    size: int

    def with_state(self, state: dict[str, Any]) -> Any:
        m = copy.deepcopy(self.module)
        m.load_state_dict(state, strict=True)
        return m.eval()


def _find_component(root: Path) -> tuple[str, str]:
    index = root / "model_index.json"
    if index.is_file():
        doc = json.loads(index.read_text())
        for key, value in doc.items():
            if isinstance(value, list) and len(value) == 2 and value[1] in _KINDS:
                return key, str(value[1])
        found = [v[1] for v in doc.values() if isinstance(v, list) and len(v) == 2 and v[1]]
        raise UnsupportedError(
            f"{index}: no pixel-space denoiser the evaluation can sample "
            f"({', '.join(_KINDS)}); components: {', '.join(map(str, found))}"
        )
    config = root / "config.json"
    if config.is_file():
        cls = str(json.loads(config.read_text()).get("_class_name", ""))
        if cls in _KINDS:
            return "", cls
        raise UnsupportedError(f"{config}: class {cls or '?'} is not one of {', '.join(_KINDS)}")
    raise ModelNotFoundError(f"{root}: no model_index.json or config.json (a diffusers folder)")


def drivable(path: str | os.PathLike[str]) -> tuple[bool, str]:
    """(whether calibration and evaluation can sample this model, why), from its folder's
    configuration files alone (nothing is loaded)."""
    root = Path(path)
    if not root.is_dir():
        return False, f"{root.name} is a file, not a diffusers folder with a sampler to drive"
    try:
        component, cls = _find_component(root)
    except (ModelNotFoundError, UnsupportedError, ValueError, OSError) as e:
        return False, str(e)
    where = f"{component}/" if component else "the folder"
    return True, f"{where} holds a diffusers {cls} the tool can sample"


def load_reference(path: str | os.PathLike[str]) -> Denoiser:
    import diffusers

    root = Path(path)
    if not root.is_dir():
        raise ModelNotFoundError(f"{root}: not a folder with a diffusers model")
    component, cls = _find_component(root)
    # diffusers' own errors (a config it cannot read, weights that do not match it) become one
    # typed error naming the folder.
    try:
        module = getattr(diffusers, cls).from_pretrained(
            root / component if component else root, low_cpu_mem_usage=False
        )
        module.eval().requires_grad_(False)
        sched_file = root / "scheduler" / "scheduler_config.json"
        sched = json.loads(sched_file.read_text()) if sched_file.is_file() else {}
        cfg = module.config
        kind = _KINDS[cls]
        classes = (
            int(cfg.num_embeds_ada_norm or 0) if kind == "dit" else int(cfg.num_class_embeds or 0)
        )
        size = cfg.sample_size
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        channels = int(cfg.in_channels)
    except ArrowQuantError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a third-party loader
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UnsupportedError(f"{root}: diffusers cannot load the {cls}: {first}") from None
    return Denoiser(root, kind, component, module, sched, classes, channels, size)


def quantized_state(ref: Denoiser, quantized: str | os.PathLike[str]) -> dict[str, Any]:
    """The reference's state dict with every tensor read from an ArrowQuant model file (or the
    output folder of `arrowquant quantize`)."""
    import torch

    import arrowquant as aq

    qpath = aq.model.resolve_model_path(quantized)
    names = set(aq.open(qpath).names())
    prefix = f"{ref.component}/" if ref.component else ""
    if prefix and not any(n.startswith(prefix) for n in names):
        prefix = ""  # quantized from the component folder itself
    state = {k: v.detach().clone() for k, v in ref.module.state_dict().items()}
    missing = [k for k in state if prefix + k not in names]
    if missing:
        raise ShapeMismatchError(
            f"{qpath}: lacks {len(missing)} tensor(s) of {ref.path} (e.g. {prefix}{missing[0]}); "
            "was it quantized from this model?"
        )
    out = {prefix + k: v for k, v in state.items()}
    aq.load_state_dict(qpath, dtype=torch.float32, out=out)
    return state


@dataclass
class Trajectory:
    samples: Any  # [N, C, H, W] float32
    timesteps: list[int]
    eps: list[Any] = field(default_factory=list)  # denoiser output per step
    inputs: dict[int, Any] = field(default_factory=dict)  # x_t at the probed steps
    probe_eps: list[Any] = field(default_factory=list)  # output on another run's x_t


def initial_noise(ref: Denoiser, n: int, seed: int) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, ref.channels, ref.size, ref.size), generator=g)
    labels = torch.arange(n) % ref.num_classes if ref.num_classes else None
    return noise, labels


def call_denoiser(ref: Denoiser, module: Any, x: Any, t: Any, labels: Any) -> Any:
    """One prediction of `module` (the reference or a copy with other weights) at timestep t."""
    import torch

    tb = torch.full((x.shape[0],), int(t), dtype=torch.long)
    if ref.kind == "unet":
        out = module(x, tb, class_labels=labels).sample
    else:
        out = module(x, timestep=tb, class_labels=labels).sample
    return out[:, : ref.channels]  # learned-sigma models return 2C channels


def sample(
    ref: Denoiser,
    module: Any,
    noise: Any,
    labels: Any,
    steps: int,
    keep_inputs: bool = False,
    probe: Trajectory | None = None,
) -> Trajectory:
    """DDIM (eta 0) from `noise`; with `probe`, also runs the denoiser on probe's inputs at up
    to PROBE_STEPS evenly spaced steps (the one-step error needs no more, and costs a call)."""
    import torch
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(  # type: ignore[no-untyped-call]
        ref.scheduler_config or {"num_train_timesteps": 1000}
    )
    sched.set_timesteps(steps)
    x = noise.clone()
    traj = Trajectory(samples=None, timesteps=[int(t) for t in sched.timesteps])
    n = len(sched.timesteps)
    probe_at = set(np.linspace(0, n - 1, min(n, PROBE_STEPS)).round().astype(int).tolist())
    with torch.inference_mode():
        for i, t in enumerate(sched.timesteps):
            eps = call_denoiser(ref, module, x, t, labels)
            traj.eps.append(eps)
            if keep_inputs and i in probe_at:
                traj.inputs[i] = x
            if probe is not None and i in probe_at:
                traj.probe_eps.append((i, call_denoiser(ref, module, probe.inputs[i], t, labels)))
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    traj.samples = x.float()
    return traj
