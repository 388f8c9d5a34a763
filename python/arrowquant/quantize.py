"""`arrowquant.quantize`: per-group INT2/INT4/INT8 weight quantization of one tensor.

``quantize(w, bits=4)`` and ``quantize(w, bits=8)`` with no other argument give the recommended
format of that width (see docs/benchmarks.md for how it compares with GGUF and NF4). Inputs are
numpy arrays or torch tensors of float32, float16 or bfloat16; C-contiguous inputs are read in
place, without a copy, and the GIL is released while the C++ core works.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt

import arrowquant._core as _core
from arrowquant.dtypes import as_dtype, float_core_name
from arrowquant.errors import ConfigurationError


def _default_threads() -> int:
    return max(1, os.cpu_count() or 1)


def _as_array(array: Any) -> tuple[np.ndarray, str]:
    """(contiguous numpy view, core dtype name); torch tensors are viewed, not copied."""
    mod = type(array).__module__
    if mod.startswith("torch"):
        import torch

        t = array.detach()
        if t.device.type != "cpu":
            raise ConfigurationError(f"tensor is on {t.device}; move it to the CPU first")
        if not t.is_contiguous():
            t = t.contiguous()
        core = float_core_name(t.dtype, "quantize")
        if core == "BF16":  # numpy has no bfloat16: its bits travel as uint16
            return t.view(torch.int16).numpy().view(np.uint16), core
        return t.numpy(), core
    a = np.asarray(array)
    core = float_core_name(a.dtype, "quantize")
    a = np.ascontiguousarray(a)
    return (a.view(np.uint16) if core == "BF16" else a), core


class QuantizedTensor:
    """Packed codes plus per-group scales (and zero-points); see docs/format.md."""

    def __init__(self, core: _core.QuantizedTensor) -> None:
        self._core = core

    @property
    def codes(self) -> npt.NDArray[np.uint8]:
        return self._core.codes

    @property
    def scales(self) -> npt.NDArray[np.uint8]:
        return self._core.scales

    @property
    def zeros(self) -> npt.NDArray[np.uint8]:
        return self._core.zeros

    @property
    def super_scales(self) -> npt.NDArray[np.uint8]:
        return self._core.super_scales

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._core.shape)

    @property
    def metadata(self) -> dict[str, Any]:
        """bits, group_size, scheme, method, scale_dtype, format, source_dtype."""
        return dict(self._core.spec) | {"source_dtype": self._core.source_dtype}

    @property
    def nbytes(self) -> int:
        return self._core.nbytes

    @property
    def bits_per_weight(self) -> float:
        """Every stored bit (codes, scales, zero-points, row padding) per weight."""
        return self._core.bits_per_weight

    def dequantize(self, dtype: Any = np.float32, threads: int | None = None) -> Any:
        """To numpy (numpy/str dtype) or torch (torch dtype): float32, float16 or bfloat16."""
        want, as_torch = _dtype_name(dtype)
        out = self._core.dequantize(want, threads or _default_threads())
        out = as_dtype(out, want)
        if as_torch:
            import torch

            if want == "BF16":
                return torch.from_numpy(out.view(np.int16)).view(torch.bfloat16)
            return torch.from_numpy(out)
        return out

    def error(self, reference: Any, threads: int | None = None) -> dict[str, float]:
        """mse, rel_rmse, sqnr_db, cosine, max_abs against the source weights."""
        arr, core = _as_array(reference)
        return dict(self._core.measure_error(arr, core, threads or _default_threads()))

    def __repr__(self) -> str:
        return (
            f"QuantizedTensor(shape={self.shape}, format={self.metadata['format']}, "
            f"bits_per_weight={self.bits_per_weight:.3f})"
        )


def _dtype_name(dtype: Any) -> tuple[str, bool]:
    """(core name, whether the caller asked for a torch tensor)."""
    return float_core_name(dtype, "dequantize to"), type(dtype).__module__.startswith("torch")


def quantize(
    array: Any,
    bits: int = 4,
    group_size: int | None = None,
    scheme: str | None = None,
    method: str | None = None,
    scale_dtype: str | None = None,
    *,
    name: str = "tensor",
    threads: int | None = None,
) -> QuantizedTensor:
    """Quantizes a 2-D (or higher: rows = first dimension) weight.

    bits: 2, 3, 4 or 8. group_size: 32, 64, 128, 256, or 0 for per channel. scheme: "asym" or
    "sym". method: "search" (error-minimizing grid) or "minmax". scale_dtype: "q6" (6-bit
    codes under per-row f16 super-scales), "f16" or "f32". Unset arguments take the
    recommended format of `bits`.
    """
    if bits not in _core.WEIGHT_BITS:
        raise ConfigurationError(f"bits must be 2, 3, 4 or 8, got {bits}")
    rec = _core.recommended_spec(bits)
    arr, core = _as_array(array)
    q = _core.quantize(
        arr,
        core,
        name,
        bits,
        rec["group_size"] if group_size is None else int(group_size),
        rec["scheme"] if scheme is None else scheme,
        rec["method"] if method is None else method,
        rec["scale_dtype"] if scale_dtype is None else scale_dtype,
        threads or _default_threads(),
    )
    return QuantizedTensor(q)
