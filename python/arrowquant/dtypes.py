"""The dtype table, exported by the C++ core (`_core.DTYPES`), and what Python derives from it:
core names ("F16") <-> numpy / torch dtypes, and f16/bf16 <-> f32 conversion in the core (round
to nearest even; see docs/format.md)."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

import arrowquant._core as _core
from arrowquant.errors import ConfigurationError

DTYPES: list[dict[str, object]] = list(_core.DTYPES)
_BY_CORE: dict[str, dict[str, object]] = {str(d["name"]): d for d in DTYPES}
_BY_ARRAY_NAME: dict[str, str] = {str(d["array_name"]): str(d["name"]) for d in DTYPES}
# The float formats weights are quantized from and dequantized to (F32, F16, BF16).
QUANTIZABLE: tuple[str, ...] = tuple(str(d["name"]) for d in DTYPES if d["quantizable"])
# Spellings users write for them besides the core and numpy/torch names.
_ALIASES = {"half": "float16", "f32": "float32", "f16": "float16"}


def numpy_dtype(core: str) -> np.dtype[Any]:
    """The numpy dtype holding a core dtype's values (bf16 and f8 through ml_dtypes)."""
    name = str(_BY_CORE[core]["array_name"])
    return np.dtype(getattr(ml_dtypes, name, None) or name)


def as_dtype(arr: np.ndarray, core: str) -> np.ndarray:
    """`arr` as the core hands it out (bf16 and f8 as their raw bits) viewed with its real dtype."""
    want = numpy_dtype(core)
    return arr.view(want) if arr.dtype != want and arr.itemsize == want.itemsize else arr


def core_name(dtype: Any) -> str | None:
    """The core name ("F16") of a numpy/torch dtype or a name ("float16", "f16", "BF16");
    None when the table has no such dtype."""
    if isinstance(dtype, str):
        upper = dtype.upper()
        if upper in _BY_CORE:
            return upper
        name = _ALIASES.get(dtype.lower(), dtype.lower())
    elif type(dtype).__module__.startswith("torch"):
        name = str(dtype).removeprefix("torch.")
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            return None
    return _BY_ARRAY_NAME.get(name)


def float_core_name(dtype: Any, what: str) -> str:
    """core_name for a quantizable float dtype, else a ConfigurationError (`what` starts it)."""
    core = core_name(dtype)
    if core not in QUANTIZABLE:
        names = ", ".join(str(_BY_CORE[c]["array_name"]) for c in QUANTIZABLE)
        shown = dtype if isinstance(dtype, str) or core is None else numpy_dtype(core).name
        raise ConfigurationError(f"{what}: {shown} is not one of {names}")
    return core


def f16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return _core.f16_bits_to_f32(np.ascontiguousarray(bits, dtype=np.uint16))


def f32_to_f16_bits(values: np.ndarray) -> np.ndarray:
    return _core.f32_to_f16_bits(np.ascontiguousarray(values, dtype=np.float32))


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return _core.bf16_bits_to_f32(np.ascontiguousarray(bits, dtype=np.uint16))


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    return _core.f32_to_bf16_bits(np.ascontiguousarray(values, dtype=np.float32))
