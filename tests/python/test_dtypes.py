"""f16/bf16 conversion is bit-exact with numpy (f16) and ml_dtypes (bf16)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from arrowquant import dtypes

ALL16 = np.arange(65536, dtype=np.uint32).astype(np.uint16)


def _f32_probe_patterns() -> np.ndarray:
    """Every f16 value, the f32 neighbours of every f16 rounding midpoint, and a sweep."""
    f16_as_f32 = ALL16.view(np.float16).astype(np.float32).view(np.uint32)
    # Midpoints between adjacent f16 values sit 2^12 f32-ulps above a normal f16; probe around
    # them (this also covers the subnormal and overflow boundaries).
    mids = f16_as_f32[:, None].astype(np.int64) + np.array([0x0FFF, 0x1000, 0x1001, -1, 1])
    sweep = np.arange(0, 2**32, 4093, dtype=np.int64)
    pats = np.concatenate([f16_as_f32.astype(np.int64), mids.ravel(), sweep]) % 2**32
    return pats.astype(np.uint32)


def test_f16_to_f32_all_patterns_bit_exact() -> None:
    ours = dtypes.f16_bits_to_f32(ALL16).view(np.uint32)
    ref = ALL16.view(np.float16).astype(np.float32).view(np.uint32)
    np.testing.assert_array_equal(ours, ref)  # NaN payloads included


def test_f32_to_f16_bit_exact_with_numpy() -> None:
    pats = _f32_probe_patterns()
    ours = dtypes.f32_to_f16_bits(pats.view(np.float32))
    with np.errstate(all="ignore"):
        ref = pats.view(np.float32).astype(np.float16).view(np.uint16)
    mismatch = np.nonzero(ours != ref)[0]
    assert mismatch.size == 0, [hex(p) for p in pats[mismatch[:5]]]


def test_bf16_to_f32_all_patterns_bit_exact() -> None:
    ours = dtypes.bf16_bits_to_f32(ALL16).view(np.uint32)
    ref = ALL16.view(ml_dtypes.bfloat16).astype(np.float32).view(np.uint32)
    np.testing.assert_array_equal(ours, ref)


def test_f32_to_bf16_bit_exact_with_ml_dtypes() -> None:
    bf_as_f32 = ALL16.astype(np.uint32) << 16
    pats = np.concatenate(
        [bf_as_f32 + d for d in (0, 0x7FFF, 0x8000, 0x8001, 0xFFFF)]
        + [np.arange(0, 2**32, 4093, dtype=np.uint64).astype(np.uint32)]
    ).astype(np.uint32)
    ours = dtypes.f32_to_bf16_bits(pats.view(np.float32))
    with np.errstate(all="ignore"):
        ref = pats.view(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(ours, ref)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_random_f32_patterns(bits: list[int]) -> None:
    pats = np.array(bits, dtype=np.uint32)
    with np.errstate(all="ignore"):
        ref16 = pats.view(np.float32).astype(np.float16).view(np.uint16)
        refbf = pats.view(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(dtypes.f32_to_f16_bits(pats.view(np.float32)), ref16)
    np.testing.assert_array_equal(dtypes.f32_to_bf16_bits(pats.view(np.float32)), refbf)


def test_dtype_table() -> None:
    names = {d["name"]: d for d in dtypes.DTYPES}
    assert {n for n, d in names.items() if d["quantizable"]} == {"F32", "F16", "BF16"}
    for n in ("F64", "I8", "I16", "I32", "I64", "U8", "BOOL", "F8_E4M3", "F8_E5M2"):
        assert n in names and not names[n]["quantizable"]
