"""Integer inference for packed layers with 8-bit activations (W8A8, W4A8): the input, after its
equalization scales, is rounded to the current timestep group's activation grid as uint8 codes
and multiplied with the weight's integer codes in int32 (C++, `_core.int8_linear` /
`_core.int8_conv2d`: AVX-512 VNNI where the CPU has it), each weight group's sum rescaled once.
The result equals the float simulation (`fake_quant`, then the dequantized weight) up to float
rounding; the integer sums are exact.

Used by PackedLinear and PackedConv2d (groups 1) for inference on CPU tensors (no gradient
wanted): in eager mode they call the kernel with the weight they prepared once; under
torch.compile / torch.export they call the custom ops `torch.ops.arrowquant.int8_linear` /
`int8_conv2d` (fake implementations give the shapes; the prepared weight is cached per packed
codes tensor). Everything else (autograd, 4-bit activations) runs the simulation. By default
only where the kernel is SIMD (`KERNEL != "scalar"`): the scalar fallback is exact but slower
than the float simulation.
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
import torch.nn.functional as F

from arrowquant import _core
from arrowquant.torch import ops

KERNEL: str = _core.int8_kernel()


def default_enabled() -> bool:
    return KERNEL != "scalar"


def _make(arrays: tuple[Any, ...], fmt: list[int]) -> Any:
    return _core.int8_weight(*ops.packed_args(arrays, fmt), torch.get_num_threads())


def prepared(module: Any, arrays: tuple[Any, ...], fmt: list[int]) -> Any:
    """The layer's weight rearranged for the kernel (`_core.Int8Weight`), made on first use and
    kept while the packed buffers are the same objects (the cache goes with them)."""
    cache = module.__dict__.get("_int8_cache")
    if cache is not None and cache[0] is arrays:
        return cache[1]
    w = _make(arrays, fmt)
    module.__dict__["_int8_cache"] = (arrays, w)
    return w


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float32).contiguous()


def linear(
    x: torch.Tensor, weight: Any, grid: tuple[float, int], bias: torch.Tensor | None
) -> torch.Tensor:
    rows, cols = weight.rows, weight.cols
    x2 = _f32(x).reshape(-1, cols)
    y = torch.empty(x2.shape[0], rows, dtype=torch.float32)
    b = None if bias is None else _f32(bias).numpy()
    _core.int8_linear(
        x2.numpy(), weight, grid[0], float(grid[1]), b, y.numpy(), torch.get_num_threads()
    )
    return y.view(*x.shape[:-1], rows).to(x.dtype)


def conv2d(
    x: torch.Tensor,
    weight: Any,
    grid: tuple[float, int],
    bias: torch.Tensor | None,
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> torch.Tensor:
    batched = x.dim() == 4
    x4 = _f32(x if batched else x.unsqueeze(0))
    n, _, h, w = x4.shape
    oh = (h + 2 * padding[0] - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w + 2 * padding[1] - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    y = torch.empty(n, weight.rows, oh, ow, dtype=torch.float32)
    b = None if bias is None else _f32(bias).numpy()
    _core.int8_conv2d(
        x4.numpy(),
        weight,
        grid[0],
        float(grid[1]),
        b,
        kernel[0],
        kernel[1],
        stride[0],
        stride[1],
        padding[0],
        padding[1],
        dilation[0],
        dilation[1],
        y.numpy(),
        torch.get_num_threads(),
    )
    y = y.to(x.dtype)
    return y if batched else y.squeeze(0)


# The ops' prepared weights, by the packed codes tensor they were made from (dropped with it).
_PREPARED: dict[int, tuple[weakref.ref[torch.Tensor], list[int], Any]] = {}


def _prepared_for(buffers: tuple[torch.Tensor, ...], fmt: list[int]) -> Any:
    codes = buffers[0]
    hit = _PREPARED.get(id(codes))
    if hit is not None and hit[0]() is codes and hit[1] == list(fmt):
        return hit[2]
    w = _make(tuple(b.detach().numpy() for b in buffers), fmt)
    key = id(codes)
    _PREPARED[key] = (weakref.ref(codes, lambda _r: _PREPARED.pop(key, None)), list(fmt), w)
    return w


@torch.library.custom_op("arrowquant::int8_linear", mutates_args=())
def linear_op(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    super_scales: torch.Tensor,
    bias: torch.Tensor | None,
    fmt: list[int],
    act_scale: float,
    act_zero: int,
) -> torch.Tensor:
    """x (equalized) rounded to the grid (act_scale, act_zero) and multiplied in integers."""
    w = _prepared_for((codes, scales, zeros, super_scales), fmt)
    return linear(x, w, (act_scale, act_zero), bias)


@linear_op.register_fake
def _linear_fake(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    super_scales: torch.Tensor,
    bias: torch.Tensor | None,
    fmt: list[int],
    act_scale: float,
    act_zero: int,
) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], fmt[5])


@torch.library.custom_op("arrowquant::int8_conv2d", mutates_args=())
def conv2d_op(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    super_scales: torch.Tensor,
    bias: torch.Tensor | None,
    fmt: list[int],
    weight_shape: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    act_scale: float,
    act_zero: int,
) -> torch.Tensor:
    """F.conv2d (groups 1, zero padding) of x (equalized, padded as the layer pads) in integers."""
    w = _prepared_for((codes, scales, zeros, super_scales), fmt)
    grid = (act_scale, act_zero)
    return conv2d(x, w, grid, bias, weight_shape[2:], stride, padding, dilation)


@conv2d_op.register_fake
def _conv2d_fake(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    super_scales: torch.Tensor,
    bias: torch.Tensor | None,
    fmt: list[int],
    weight_shape: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    act_scale: float,
    act_zero: int,
) -> torch.Tensor:
    return F.conv2d(x, x.new_empty(weight_shape), None, stride, padding, dilation)
