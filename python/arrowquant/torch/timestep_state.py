"""The timestep a denoiser is being run at, for the layers whose activation grid depends on it.

A forward pre-hook (`TimestepTracker`) reads it from the denoiser's `timestep` / `timesteps` /
`t` argument; `timestep(t)` sets it by hand for calls made inside a block.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from arrowquant.torch.apply import ApplyReport

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
