"""Layers that keep their weight packed at run time: `PackedLinear` and `PackedConv1d` /
`PackedConv2d` / `PackedConv3d`.

Their buffers are the weight's stored bytes (`weight_codes`, `weight_scales`, `weight_zeros`,
`weight_super_scales`, as in the model file) and `weight_format` (the seven integers of
arrowquant.torch.ops); the forward calls the custom ops there, which decode a tile of the weight
at a time. So the module takes the file's bytes of memory, not the float weight's, and
`state_dict()` holds exactly those buffers (it round-trips through `load_state_dict`).
`.to(dtype)` leaves the packed bytes as they are and changes the bias and the compute dtype is
the input's.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arrowquant.torch import int8, ops
from arrowquant.torch.act import ActQuant

BUFFERS = ("codes", "scales", "zeros", "super_scales")
_SCHEMES = {"asym": 0, "sym": 1}
_STORAGE = {"f16": 0, "f32": 1}


def format_of(spec: dict[str, Any], rows: int, cols: int) -> list[int]:
    """The seven integers of arrowquant.torch.ops from a stored spec (QuantizedTensor.spec)."""
    sd = spec["scale_dtype"]
    storage = _STORAGE.get(sd, 2)
    scale_bits = int(sd[1:]) if storage == 2 else 6
    return [
        spec["bits"],
        spec["group_size"],
        _SCHEMES[spec["scheme"]],
        storage,
        scale_bits,
        rows,
        cols,
    ]


def format_name(fmt: list[int]) -> str:
    bits, group, scheme, storage, scale_bits = fmt[:5]
    sd = ("f16", "f32", f"q{scale_bits}")[storage]
    return f"int{bits}-{('asym', 'sym')[scheme]}-g{group}-{sd}"


class _Packed(nn.Module):
    """The packed weight's buffers and what both layer kinds share."""

    weight_codes: torch.Tensor
    weight_scales: torch.Tensor
    weight_zeros: torch.Tensor
    weight_super_scales: torch.Tensor
    weight_format: torch.Tensor

    def __init__(self, weight_shape: list[int], tile_elements: int) -> None:
        super().__init__()
        self.weight_shape = list(weight_shape)
        self.tile_elements = tile_elements
        self.act: ActQuant | None = None
        # Integer kernels for 8-bit activations (arrowquant.torch.int8); apply(int8=...) sets it.
        self.int8_kernels = int8.default_enabled()
        for b in BUFFERS:
            self.register_buffer(f"weight_{b}", torch.empty(0, dtype=torch.uint8))
        self.register_buffer("weight_format", torch.zeros(7, dtype=torch.int64))
        self._fmt: list[int] = [0] * 7

    def set_packed(self, fmt: list[int], buffers: dict[str, torch.Tensor]) -> None:
        """Takes the stored bytes (uint8 tensors) of the weight; no copy."""
        for b in BUFFERS:
            t = buffers[b]
            if t.dtype != torch.uint8 or t.dim() != 1:
                raise ValueError(f"packed weight buffer '{b}' must be a 1-D uint8 tensor")
            setattr(self, f"weight_{b}", t)
        self.weight_format = torch.tensor(fmt, dtype=torch.int64)
        self._fmt = list(fmt)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Buffer sizes differ between formats: take the stored tensors as they are.
        for b in (*BUFFERS, "format"):
            key = f"{prefix}weight_{b}"
            if key in state_dict:
                setattr(self, f"weight_{b}", torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args)
        self._fmt = [int(v) for v in self.weight_format.tolist()]

    @property
    def fmt(self) -> list[int]:
        return self._fmt

    def packed_bytes(self) -> int:
        return sum(getattr(self, f"weight_{b}").numel() for b in BUFFERS)

    def bits_per_weight(self) -> float:
        return 8.0 * self.packed_bytes() / max(1, self._fmt[5] * self._fmt[6])

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole float weight (the values the forward multiplies with)."""
        w: torch.Tensor = torch.ops.arrowquant.dequantize(
            *self._buffers_in_order(), self._fmt, dtype
        )
        return w.view(self.weight_shape)

    def _buffers_in_order(self) -> tuple[torch.Tensor, ...]:
        return tuple(getattr(self, f"weight_{b}") for b in BUFFERS)

    def _arrays(self) -> tuple[Any, ...]:
        """numpy views of the four buffers for the eager kernel, re-made whenever a buffer is
        replaced (load_state_dict, .to(), offload hooks)."""
        own = self._buffers
        bufs = (
            own["weight_codes"],
            own["weight_scales"],
            own["weight_zeros"],
            own["weight_super_scales"],
        )
        cache = self.__dict__.get("_array_cache")
        if cache is None or any(a is not b for a, b in zip(cache[0], bufs, strict=True)):
            cache = (bufs, tuple(b.numpy() for b in bufs if b is not None))
            self.__dict__["_array_cache"] = cache
        return cache[1]

    def __getstate__(self) -> dict[str, Any]:
        # The numpy views are of this module's buffers: a copy or a pickle makes its own.
        state = dict(super().__getstate__())  # type: ignore[no-untyped-call]
        state.pop("_array_cache", None)
        state.pop("_int8_cache", None)
        return state

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.act is None else self.act(x)

    def _int8_grid(self, x: torch.Tensor) -> tuple[float, int] | None:
        """The activation grid when this forward runs the integer kernel: 8-bit activations,
        CPU inference without gradients, the kernel enabled."""
        act = self.act
        if act is None or not self.int8_kernels or not act.enabled:
            return None
        grid = act.grid()
        if grid is None or grid[2] != 8 or x.device.type != "cpu":
            return None
        if x.dtype not in ops.FLOAT_DTYPES:
            return None
        bias = self._parameters["bias"]
        if torch.is_grad_enabled() and (
            x.requires_grad or (bias is not None and bias.requires_grad)
        ):
            return None
        if self._buffers["weight_codes"].device.type != "cpu":  # type: ignore[union-attr]
            return None
        return grid[0], grid[1]


class PackedLinear(_Packed):
    """nn.Linear computing with a packed weight (arrowquant.torch.ops.linear)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, tile_elements: int) -> None:
        super().__init__([out_features, in_features], tile_elements)
        self.in_features = in_features
        self.out_features = out_features
        self.register_parameter("bias", nn.Parameter(torch.zeros(out_features)) if bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self._int8_grid(x)
        bias = self._parameters["bias"]
        if grid is not None:
            assert self.act is not None
            x = self.act.equalize(x)
            if ops.eager(x, bias):
                w = int8.prepared(self, self._arrays(), self._fmt)
                return int8.linear(x, w, grid, bias)
            yi: torch.Tensor = torch.ops.arrowquant.int8_linear(
                x, *self._buffers_in_order(), bias, self._fmt, grid[0], grid[1]
            )
            return yi
        x = self._input(x)
        if ops.eager(x, bias) and self._buffers["weight_codes"].device.type == "cpu":  # type: ignore[union-attr]
            return ops.linear_packed(x, self._arrays(), bias, self._fmt, self.tile_elements)
        y: torch.Tensor = torch.ops.arrowquant.linear(
            x, *self._buffers_in_order(), self.bias, self._fmt, self.tile_elements
        )
        return y

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, format={format_name(self._fmt)}"
        )


class PackedConv(_Packed):
    """nn.Conv1d / Conv2d / Conv3d computing with a packed weight (arrowquant.torch.ops.conv)."""

    def __init__(self, conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, tile_elements: int) -> None:
        super().__init__(list(conv.weight.shape), tile_elements)
        self.in_channels = conv.in_channels
        self.out_channels = conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride = conv.stride
        self.dilation = conv.dilation
        self.groups = conv.groups
        self.padding_mode = conv.padding_mode
        self.padding = conv.padding
        self._pad: tuple[int, ...] | None = None  # explicit F.pad before the conv
        self._conv_padding = [0] * (len(conv.weight.shape) - 2)
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            self._pad = tuple(conv._reversed_padding_repeated_twice)
        else:
            self._conv_padding = list(conv.padding)
        has_bias = conv.bias is not None
        self.register_parameter(
            "bias", nn.Parameter(torch.zeros(conv.out_channels)) if has_bias else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self._int8_grid(x) if len(self.weight_shape) == 4 and self.groups == 1 else None
        if grid is not None:
            assert self.act is not None
            x = self.act.equalize(x)
        else:
            x = self._input(x)
        if self._pad is not None:
            # Zero padding after rounding or before it is the same: 0.0 is on every grid.
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._pad, mode=mode)
        if grid is not None:
            bias = self._parameters["bias"]
            geometry = (list(self.stride), self._conv_padding, list(self.dilation))
            if ops.eager(x, bias):
                w = int8.prepared(self, self._arrays(), self._fmt)
                return int8.conv2d(x, w, grid, bias, self.weight_shape[2:], *geometry)
            yc: torch.Tensor = torch.ops.arrowquant.int8_conv2d(
                x,
                *self._buffers_in_order(),
                bias,
                self._fmt,
                self.weight_shape,
                *geometry,
                grid[0],
                grid[1],
            )
            return yc
        conv = (
            self.weight_shape,
            list(self.stride),
            self._conv_padding,
            list(self.dilation),
            self.groups,
        )
        bias = self._parameters["bias"]
        if ops.eager(x, bias) and self._buffers["weight_codes"].device.type == "cpu":  # type: ignore[union-attr]
            return ops.conv_packed(x, self._arrays(), bias, self._fmt, conv, self.tile_elements)
        y: torch.Tensor = torch.ops.arrowquant.conv(
            x, *self._buffers_in_order(), self.bias, self._fmt, *conv, self.tile_elements
        )
        return y

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, groups={self.groups}, "
            f"format={format_name(self._fmt)}"
        )


class PackedConv1d(PackedConv):
    """nn.Conv1d with a packed weight."""


class PackedConv2d(PackedConv):
    """nn.Conv2d with a packed weight."""


class PackedConv3d(PackedConv):
    """nn.Conv3d with a packed weight."""


PACKED_CONV = {nn.Conv1d: PackedConv1d, nn.Conv2d: PackedConv2d, nn.Conv3d: PackedConv3d}
