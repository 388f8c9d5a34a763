"""f16/bf16 <-> f32 conversion in the C++ core (round to nearest even; see docs/format.md)."""

from __future__ import annotations

import numpy as np

import arrowquant._core as _core


def f16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return _core.f16_bits_to_f32(np.ascontiguousarray(bits, dtype=np.uint16))


def f32_to_f16_bits(values: np.ndarray) -> np.ndarray:
    return _core.f32_to_f16_bits(np.ascontiguousarray(values, dtype=np.float32))


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return _core.bf16_bits_to_f32(np.ascontiguousarray(bits, dtype=np.uint16))


def f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    return _core.f32_to_bf16_bits(np.ascontiguousarray(values, dtype=np.float32))


DTYPES: list[dict[str, object]] = list(_core.DTYPES)
