"""PyTorch custom ops that compute with packed weights: `torch.ops.arrowquant.linear`,
`torch.ops.arrowquant.conv` (1-D, 2-D and 3-D) and `torch.ops.arrowquant.dequantize`.

A packed weight is its four stored buffers (codes, scales, zero-points, super-scales: the bytes
of the model file) plus `fmt`, seven integers: bits, group size, scheme (0 asymmetric,
1 symmetric), scale storage (0 f16, 1 f32, 2 coded), scale bits, rows, cols. The CPU kernel
decodes the weight a tile of rows (output channels) at a time into a small scratch buffer
(C++, `_core.dequantize_rows`: SIMD, threads, GIL released) and multiplies each tile with
PyTorch's own GEMM / convolution, so the whole float weight never exists. The fake (meta)
implementations give torch.compile and torch.export the output shapes without running it; a
CUDA kernel would register under the same names.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.grad import conv1d_input, conv2d_input, conv3d_input

from arrowquant import _core

# Elements of the scratch buffer a weight is decoded into, per thread and dtype: 16 MiB of f32.
# Weights up to this size are decoded whole (one GEMM); bigger ones tile by tile.
DEFAULT_TILE_ELEMENTS = 4 << 20
# Below this many elements a decode is not worth waking a second thread.
_PARALLEL_ELEMENTS = 1 << 22
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_scratch = threading.local()
# By the number of spatial dimensions - 1 (the weight's rank - 3).
_CONV = (F.conv1d, F.conv2d, F.conv3d)
_CONV_INPUT: tuple[Any, ...] = (conv1d_input, conv2d_input, conv3d_input)


def scratch(elements: int, dtype: torch.dtype) -> tuple[torch.Tensor, Any]:
    """A reusable buffer of `elements` values of `dtype` for this thread, as a tensor and as
    what the C++ decoder takes (a numpy view; the tensor itself for bfloat16). Only one decode
    at a time uses it, and nothing returned by an op aliases it."""
    bufs: dict[torch.dtype, tuple[torch.Tensor, Any]] = _scratch.__dict__.setdefault("bufs", {})
    pair = bufs.get(dtype)
    if pair is None or pair[0].numel() < elements:
        t = torch.empty(elements, dtype=dtype)
        pair = (t, t if dtype == torch.bfloat16 else t.numpy())
        bufs[dtype] = pair
    return pair[0][:elements], pair[1][:elements]


def decode_tile(
    packed: Sequence[Any], fmt: list[int], begin: int, end: int, dtype: torch.dtype
) -> torch.Tensor:
    """Rows [begin, end) of the packed weight decoded into this thread's scratch (flat)."""
    n = (end - begin) * fmt[6]
    t, dst = scratch(n, dtype)
    _decode(packed, fmt, begin, end, dst, torch.get_num_threads() if n >= _PARALLEL_ELEMENTS else 1)
    return t


PackedArgs = tuple[Any, Any, Any, Any, int, int, int, int, int, int, int]


def packed_args(packed: Sequence[Any], fmt: list[int]) -> PackedArgs:
    """The four buffers and the seven format numbers, in the order the C++ entry points take."""
    codes, scales, zeros, super_scales = packed
    bits, group, scheme, storage, scale_bits, rows, cols = fmt
    return (
        codes,
        scales,
        zeros,
        super_scales,
        bits,
        group,
        scheme,
        storage,
        scale_bits,
        rows,
        cols,
    )


def _decode(
    packed: Sequence[Any], fmt: list[int], begin: int, end: int, dst: Any, threads: int
) -> None:
    _core.dequantize_rows(*packed_args(packed, fmt), begin, end, dst, threads)


def release_scratch() -> None:
    """Frees this thread's scratch buffers (they are re-made on the next forward)."""
    _scratch.__dict__.pop("bufs", None)


def decode_rows(
    packed: Sequence[Any], fmt: list[int], begin: int, end: int, out: torch.Tensor
) -> torch.Tensor:
    """Rows [begin, end) of the packed weight (its four buffers, as uint8 tensors or numpy
    arrays) decoded into `out` ((end - begin) * cols values)."""
    n = (end - begin) * fmt[6]
    threads = torch.get_num_threads() if n >= _PARALLEL_ELEMENTS else 1
    # numpy views cross into C++ several times faster than torch's DLPack export.
    dst = out if out.dtype == torch.bfloat16 else out.detach().numpy()
    _decode(packed, fmt, begin, end, dst, threads)
    return out


def _check(x: torch.Tensor, codes: torch.Tensor | None = None) -> None:
    where = x.device if codes is None or x.device.type != "cpu" else codes.device
    if where.type != "cpu":
        raise NotImplementedError(
            f"arrowquant packed weights compute on the CPU only (tensors on {where}); load with "
            "arrowquant.torch.apply(..., packed=False) for other devices"
        )
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"arrowquant packed layer: input dtype {x.dtype} is not a float type")


def _tile_rows(fmt: list[int], tile_elements: int) -> int:
    rows, cols = fmt[5], fmt[6]
    return max(1, min(rows, tile_elements // max(cols, 1)))


def linear_cpu(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    super_scales: torch.Tensor,
    bias: torch.Tensor | None,
    fmt: list[int],
    tile_elements: int,
) -> torch.Tensor:
    """y = x W^T + b with W (rows x cols) decoded from its packed buffers tile by tile."""
    _check(x, codes)
    return linear_packed(x, (codes, scales, zeros, super_scales), bias, fmt, tile_elements)


def linear_packed(
    x: torch.Tensor,
    packed: Sequence[Any],
    bias: torch.Tensor | None,
    fmt: list[int],
    tile_elements: int,
) -> torch.Tensor:
    """linear_cpu with the four buffers as one sequence (numpy views from a layer's cache)."""
    _check(x)
    rows, cols = fmt[5], fmt[6]
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    step = _tile_rows(fmt, tile_elements)
    if step >= rows:
        w = decode_tile(packed, fmt, 0, rows, x.dtype).view(rows, cols)
        return F.linear(x, w, bias)
    x2 = x.reshape(-1, cols)
    y = x2.new_empty(x2.shape[0], rows)
    for r in range(0, rows, step):
        e = min(rows, r + step)
        w = decode_tile(packed, fmt, r, e, x.dtype).view(e - r, cols)
        y[:, r:e] = F.linear(x2, w, None if bias is None else bias[r:e])
    return y.view(*x.shape[:-1], rows)


linear = torch.library.custom_op("arrowquant::linear", mutates_args=())(linear_cpu)


@linear.register_fake
def _linear_fake(
    x: torch.Tensor,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    super_scales: torch.Tensor,
    bias: torch.Tensor | None,
    fmt: list[int],
    tile_elements: int,
) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], fmt[5])


def conv_cpu(
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
    groups: int,
    tile_elements: int,
) -> torch.Tensor:
    """F.conv1d / conv2d / conv3d (by the weight's rank) with the weight (out, in / groups,
    *kernel) decoded tile by tile: a tile is a run of output channels (whole channel groups for
    grouped convolutions)."""
    _check(x, codes)
    packed = (codes, scales, zeros, super_scales)
    conv = (weight_shape, stride, padding, dilation, groups)
    return conv_packed(x, packed, bias, fmt, conv, tile_elements)


def conv_packed(
    x: torch.Tensor,
    packed: Sequence[Any],
    bias: torch.Tensor | None,
    fmt: list[int],
    conv: tuple[list[int], list[int], list[int], list[int], int],
    tile_elements: int,
) -> torch.Tensor:
    """conv_cpu with the buffers as one sequence and the convolution's arguments as
    (weight shape, stride, padding, dilation, groups)."""
    _check(x)
    weight_shape, stride, padding, dilation, groups = conv
    rows = fmt[5]
    if bias is not None and bias.dtype != x.dtype:
        bias = bias.to(x.dtype)
    kernel = weight_shape[1:]
    fn = _CONV[len(kernel) - 2]
    per_group = rows // groups
    step = _tile_rows(fmt, tile_elements)
    if groups > 1:  # a tile holds whole groups, so that it is a grouped conv of its own
        step = max(per_group, step // per_group * per_group)
    if step >= rows:
        w = decode_tile(packed, fmt, 0, rows, x.dtype).view(rows, *kernel)
        return fn(x, w, bias, stride, padding, dilation, groups)
    parts = []
    for r in range(0, rows, step):
        e = min(rows, r + step)
        w = decode_tile(packed, fmt, r, e, x.dtype).view(e - r, *kernel)
        xg = x if groups == 1 else x[:, r // per_group * kernel[0] : e // per_group * kernel[0]]
        b = None if bias is None else bias[r:e]
        parts.append(fn(xg, w, b, stride, padding, dilation, max(1, (e - r) // per_group)))
    return torch.cat(parts, dim=1)


conv = torch.library.custom_op("arrowquant::conv", mutates_args=())(conv_cpu)


@conv.register_fake
def _conv_fake(
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
    groups: int,
    tile_elements: int,
) -> torch.Tensor:
    w = x.new_empty(weight_shape)
    return _CONV[len(weight_shape) - 3](x, w, None, stride, padding, dilation, groups)


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def eager(*tensors: torch.Tensor | None) -> bool:
    """Whether a layer may call the kernel itself instead of its op: plain CPU tensors, no
    graph being traced or compiled, no gradient wanted. The op's dispatch (about 0.1 ms a call)
    is most of a small layer's time; under torch.compile / export and for autograd the op runs."""
    if torch.compiler.is_compiling():
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN or (grad and t.requires_grad)):
            return False
    return True


# Gradients flow to the input and the bias (adapters, textual inversion, guidance by gradients
# through a frozen quantized model); the packed weight is frozen and gets none.
@torch.library.custom_op("arrowquant::dequantize", mutates_args=())
def dequantize(
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    super_scales: torch.Tensor,
    fmt: list[int],
    dtype: torch.dtype,
) -> torch.Tensor:
    """The whole weight (rows x cols) in `dtype`: the values the forward multiplies with."""
    w = torch.empty(fmt[5], fmt[6], dtype=dtype)
    return decode_rows((codes, scales, zeros, super_scales), fmt, 0, fmt[5], w)


@dequantize.register_fake
def _dequantize_fake(
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    super_scales: torch.Tensor,
    fmt: list[int],
    dtype: torch.dtype,
) -> torch.Tensor:
    return codes.new_empty(fmt[5], fmt[6], dtype=dtype)


def _full_weight(ctx: object, dtype: torch.dtype) -> torch.Tensor:
    codes, scales, zeros, super_scales = ctx.saved_tensors  # type: ignore[attr-defined]
    fmt = ctx.fmt  # type: ignore[attr-defined]
    w: torch.Tensor = torch.ops.arrowquant.dequantize(
        codes, scales, zeros, super_scales, fmt, dtype
    )
    return w


def _setup_linear(ctx: object, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, codes, scales, zeros, super_scales, bias, fmt, _ = inputs
    ctx.save_for_backward(codes, scales, zeros, super_scales)  # type: ignore[attr-defined]
    ctx.fmt = fmt  # type: ignore[attr-defined]
    ctx.has_bias = bias is not None  # type: ignore[attr-defined]


def _linear_backward(ctx: object, grad: torch.Tensor) -> tuple[Any, ...]:
    fmt = ctx.fmt  # type: ignore[attr-defined]
    w = _full_weight(ctx, grad.dtype)
    gx = grad @ w
    gb = grad.reshape(-1, fmt[5]).sum(0) if ctx.has_bias else None  # type: ignore[attr-defined]
    return gx, None, None, None, None, gb, None, None


linear.register_autograd(_linear_backward, setup_context=_setup_linear)


def _setup_conv(ctx: object, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, codes, scales, zeros, super_scales, bias, fmt, shape, stride, padding, dilation, groups = (
        inputs[:12]
    )
    ctx.save_for_backward(codes, scales, zeros, super_scales)  # type: ignore[attr-defined]
    ctx.fmt = fmt  # type: ignore[attr-defined]
    ctx.conv = (list(x.shape), shape, stride, padding, dilation, groups)  # type: ignore[attr-defined]
    ctx.has_bias = bias is not None  # type: ignore[attr-defined]


def _conv_backward(ctx: object, grad: torch.Tensor) -> tuple[Any, ...]:
    in_shape, shape, stride, padding, dilation, groups = ctx.conv  # type: ignore[attr-defined]
    w = _full_weight(ctx, grad.dtype).reshape(shape)
    grad_input = _CONV_INPUT[len(shape) - 3]
    gx = grad_input(in_shape, w, grad, stride, padding, dilation, groups)
    dims = [0, *range(2, grad.dim())]
    gb = grad.sum(dims) if ctx.has_bias else None  # type: ignore[attr-defined]
    return (gx, None, None, None, None, gb) + (None,) * 7


conv.register_autograd(_conv_backward, setup_context=_setup_conv)
