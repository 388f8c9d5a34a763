"""Activation side of a quantized layer: equalization (x * s) and the current timestep group's
activation grid, simulated in floating point (`fake_quant`), and the dequantize-once layers
(`apply(..., packed=False)`) that hold their weight as float parameters.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arrowquant.torch.timestep_state import TimestepState


def fake_quant(x: torch.Tensor, scale: float, zero_point: int, bits: int) -> torch.Tensor:
    """x on the asymmetric grid q = clamp(round(x / scale) + zp, 0, 2^bits - 1)."""
    qmax = (1 << bits) - 1
    q = torch.clamp(torch.round(x / scale) + zero_point, 0, qmax)
    return (q - zero_point) * scale


class ActQuant(nn.Module):
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

    def equalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.eq_scales is None:
            return x
        shape = [1] * x.dim()
        shape[self.channel_dim if self.channel_dim >= 0 else x.dim() - 1] = -1
        eq: torch.Tensor = self.eq_scales  # type: ignore[assignment]
        return x * eq.to(x.dtype).view(shape)

    def grid(self) -> tuple[float, int, int] | None:
        """(scale, zero point, bits) of the current timestep group's grid; None when the input
        is not rounded."""
        ta = self.time_aware
        if not self.enabled or ta is None:
            return None
        g = self.group(self.state.current)
        return ta["act_scales"][g], ta["act_zero_points"][g], ta["act_bits"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.equalize(x)
        grid = self.grid()
        if grid is not None:
            x = fake_quant(x, *grid)
        return x


class QuantizedLinear(nn.Linear):
    act: ActQuant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act(x), self.weight, self.bias)


class QuantizedConv2d(nn.Conv2d):
    act: ActQuant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.act(x))


def dequantized_replacement(m: nn.Module, act: ActQuant) -> nn.Module:
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
