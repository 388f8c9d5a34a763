"""Putting an ArrowQuant model file back into a PyTorch / diffusers module.

``apply(model, path)`` loads every tensor (dequantized) into the module, and replaces each
``nn.Linear`` / ``nn.Conv2d`` that calibration gave activation parameters with a quantized
module that:
- holds its weight as stored (W / s for equalized layers) and multiplies its input by s;
- fake-quantizes its input with the activation grid of the current timestep group (the
  timestep is read from the denoiser's forward call by a hook, or set with ``timestep()``).

The arithmetic is simulated in floating point (weights dequantized once, activations rounded to
their grid), so W8A8 / W4A8 numerics run end to end in diffusers on any device.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Timesteps set with `timestep(t)` (no report): they apply to every tracked model.
_FORCED: list[int] = []
# Names a denoiser's forward gives its timestep argument.
TIMESTEP_ARGS = ("timestep", "timesteps", "t")


@dataclass
class TimestepState:
    """The timestep the denoiser is being run at (shared by its quantized layers)."""

    t: int | None = None
    forced: list[int] = field(default_factory=list)

    @property
    def current(self) -> int | None:
        if self.forced:
            return self.forced[-1]
        return _FORCED[-1] if _FORCED else self.t


def _timestep_position(model: nn.Module) -> tuple[str | None, int | None]:
    """(name, positional index) of the forward's timestep parameter, if it has one."""
    import inspect

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None, None
    for i, p in enumerate(params):
        if p.name in TIMESTEP_ARGS:
            positional = p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            return p.name, i if positional else None
    return None, None


def timestep_value(t: Any) -> int | None:
    """An integer timestep from what a forward was given: the first element of a tensor; a
    continuous time in (0, 1) (flow matching, EDM-style samplers) as round(1000 t)."""
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        if not t.numel():
            return None
        floating = t.is_floating_point()
        t = t.reshape(-1)[0].item()
    else:
        floating = isinstance(t, float)
    v = float(t)
    if floating and 0.0 < v < 1.0:
        return round(1000.0 * v)
    return round(v)


class TimestepTracker:
    """A forward pre-hook on the denoiser that records the timestep of each call."""

    def __init__(self, model: nn.Module, state: TimestepState | None = None) -> None:
        self.state = state or TimestepState()
        self._name, self._pos = _timestep_position(model)
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        t = kwargs.get(self._name) if self._name else None
        if t is None and self._pos is not None and self._pos < len(args):
            t = args[self._pos]
        self.state.t = timestep_value(t)

    def remove(self) -> None:
        self._handle.remove()


def fake_quant(x: torch.Tensor, scale: float, zero_point: int, bits: int) -> torch.Tensor:
    """x on the asymmetric grid q = clamp(round(x / scale) + zp, 0, 2^bits - 1)."""
    qmax = (1 << bits) - 1
    q = torch.clamp(torch.round(x / scale) + zero_point, 0, qmax)
    return (q - zero_point) * scale


class _ActQuant(nn.Module):
    """Equalization (x * s) and timestep-grouped activation fake quantization of an input."""

    def __init__(
        self,
        channel_dim: int,
        eq_scales: torch.Tensor | None,
        time_aware: dict[str, Any] | None,
        state: TimestepState,
    ) -> None:
        super().__init__()
        self.channel_dim = channel_dim
        self.state = state
        self.register_buffer("eq_scales", eq_scales)
        self.time_aware = time_aware
        self.enabled = time_aware is not None

    def group(self, t: int | None) -> int:
        ta = self.time_aware
        assert ta is not None
        if ta["num_groups"] == 1:  # inputs that do not move with t: no timestep needed
            return 0
        if t is None:
            raise RuntimeError(
                "quantized activations need the timestep: call the denoiser with it, or use "
                "`with arrowquant.torch.timestep(model, t):`"
            )
        bounds = ta["group_bounds"]
        g = 0
        while g + 1 < ta["num_groups"] and t >= bounds[g + 1]:
            g += 1
        return g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.eq_scales is not None:
            shape = [1] * x.dim()
            shape[self.channel_dim if self.channel_dim >= 0 else x.dim() - 1] = -1
            eq: torch.Tensor = self.eq_scales  # type: ignore[assignment]
            x = x * eq.to(x.dtype).view(shape)
        if self.enabled and self.time_aware is not None:
            g = self.group(self.state.current)
            ta = self.time_aware
            x = fake_quant(x, ta["act_scales"][g], ta["act_zero_points"][g], ta["act_bits"])
        return x


class QuantizedLinear(nn.Linear):
    act: _ActQuant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act(x), self.weight, self.bias)


class QuantizedConv2d(nn.Conv2d):
    act: _ActQuant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.act(x))


def _replacement(m: nn.Module, act: _ActQuant) -> nn.Module:
    q: nn.Module
    if isinstance(m, nn.Linear):
        q = QuantizedLinear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
    else:
        assert isinstance(m, nn.Conv2d)
        q = QuantizedConv2d(
            m.in_channels,
            m.out_channels,
            m.kernel_size,  # type: ignore[arg-type]
            stride=m.stride,  # type: ignore[arg-type]
            padding=m.padding,  # type: ignore[arg-type]
            dilation=m.dilation,  # type: ignore[arg-type]
            groups=m.groups,
            bias=m.bias is not None,
            padding_mode=m.padding_mode,
            device="meta",
        )
    q.weight = m.weight
    q.bias = m.bias
    q.act = act
    return q


def _prefix(names: set[str], keys: list[str]) -> str:
    for cand in sorted({n.split("/", 1)[0] + "/" for n in names if "/" in n}) + [""]:
        if all(cand + k in names for k in keys):
            return cand
    return ""


@dataclass
class ApplyReport:
    loaded: int
    equalized: list[str]
    act_quantized: list[str]
    state: TimestepState
    tracker: TimestepTracker

    def set_act_quant(self, model: nn.Module, enabled: bool) -> None:
        for m in model.modules():
            if isinstance(m, _ActQuant) and m.time_aware is not None:
                m.enabled = enabled


def apply(
    model: nn.Module,
    quantized: str | os.PathLike[str],
    act_quant: bool = True,
    dtype: torch.dtype | None = None,
    prefix: str | None = None,
) -> ApplyReport:
    """Loads the quantized file into `model` (in place); see the module docstring. `prefix`:
    the model's names in the file ("unet/"); None finds it."""
    import arrowquant as aq
    from arrowquant.errors import ShapeMismatchError

    qm = aq.open(quantized)
    path = qm.path
    names = set(qm.names())
    state_keys = list(model.state_dict().keys())
    if prefix is None:
        prefix = _prefix(names, state_keys)
    missing = [k for k in state_keys if prefix + k not in names]
    if missing:
        raise ShapeMismatchError(
            f"{path}: lacks {len(missing)} tensor(s) of the model (e.g. {missing[0]}); "
            "was it quantized from this model?"
        )
    params = {prefix + k: v for k, v in model.state_dict().items()}
    with torch.no_grad():
        aq.load_state_dict(path, out=params)
    state = TimestepState()
    equalized: list[str] = []
    act_quantized: list[str] = []
    replace: list[tuple[str, nn.Module]] = []
    for mod_name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)) or type(m) not in (nn.Linear, nn.Conv2d):
            continue
        wname = f"{prefix}{mod_name}.weight"
        if wname not in names:
            continue
        info = qm.info(wname)
        spatial = info.get("spatial")
        ta = info.get("time_aware")
        eq = None
        if spatial and len(spatial["equalization_scales"]):
            eq = torch.tensor(spatial["equalization_scales"], dtype=torch.float32)
            stored = qm._core.load([wname], "F32", 1, as_stored=True)[0]
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(stored).to(m.weight.dtype))
            equalized.append(mod_name)
        if eq is None and ta is None:
            continue
        if ta is not None:
            act_quantized.append(mod_name)
        act = _ActQuant(1 if isinstance(m, nn.Conv2d) else -1, eq, ta, state)
        act.enabled = act_quant and ta is not None
        replace.append((mod_name, _replacement(m, act)))
    for mod_name, q in replace:
        parent_name, _, child = mod_name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, q)
    if dtype is not None:
        model.to(dtype)
    tracker = TimestepTracker(model, state)
    return ApplyReport(len(params), equalized, act_quantized, state, tracker)


def apply_pipeline(
    pipe: Any,
    quantized: str | os.PathLike[str],
    act_quant: bool = True,
    dtype: torch.dtype | None = None,
) -> dict[str, ApplyReport]:
    """`apply` to every component of a diffusers pipeline (`pipe.components`) that the quantized
    file holds (text encoder, denoiser, VAE, ...), each under its own folder's names; returns
    the report of each. A component the file lacks is left as it is."""
    import arrowquant as aq
    from arrowquant.errors import ShapeMismatchError

    names = aq.open(quantized).names()
    out: dict[str, ApplyReport] = {}
    for key, module in pipe.components.items():
        if isinstance(module, nn.Module) and any(n.startswith(f"{key}/") for n in names):
            out[key] = apply(module, quantized, act_quant, dtype, prefix=f"{key}/")
    if not out:
        raise ShapeMismatchError(
            f"{quantized}: holds none of the pipeline's components "
            f"({', '.join(k for k, m in pipe.components.items() if isinstance(m, nn.Module))})"
        )
    return out


@contextlib.contextmanager
def timestep(report: ApplyReport | int, t: int | None = None) -> Iterator[None]:
    """Sets the timestep for calls made inside the block: `timestep(t)` for every tracked model
    (calibration of `quantize_module` included), `timestep(report, t)` for one applied model."""
    stack = _FORCED if t is None else report.state.forced  # type: ignore[union-attr]
    stack.append(int(report if t is None else t))  # type: ignore[arg-type]
    try:
        yield
    finally:
        stack.pop()
