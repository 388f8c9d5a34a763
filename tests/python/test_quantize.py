"""arrowquant.quantize from Python: formats, invariants (hypothesis), inputs and errors."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import arrowquant as aq

FORMATS = [
    dict(bits=b, group_size=g, scheme=s, method=m, scale_dtype=d)
    for b in (2, 4, 8)
    for g in (32, 64, 128, 256, 0)
    for s in ("asym", "sym")
    for m in ("minmax", "search")
    for d in ("f16", "f32", "q6", "q7")
]


def _unpack(codes: np.ndarray, n: int, bits: int, rows: int) -> np.ndarray:
    per_row = (n * bits + 7) // 8
    out = np.empty((rows, n), np.uint8)
    for r in range(rows):
        row = codes[r * per_row : (r + 1) * per_row]
        bitsarr = np.unpackbits(row, bitorder="little")[: n * bits].reshape(n, bits)
        out[r] = (bitsarr * (1 << np.arange(bits))).sum(1)
    return out


def test_recommended_defaults_and_sizes() -> None:
    w = np.random.default_rng(0).normal(0, 0.02, (64, 512)).astype(np.float32)
    for bits in (2, 4, 8):
        q = aq.quantize(w, bits=bits)
        sb = 7 if bits == 4 else 6
        assert q.metadata["format"] == f"int{bits}-asym-g32-q{sb}-search"
        assert q.shape == (64, 512)
        stored = q.codes.nbytes + q.scales.nbytes + q.zeros.nbytes + q.super_scales.nbytes
        assert q.nbytes == stored
        assert q.bits_per_weight == pytest.approx(8 * stored / w.size)
        # Codes really are packed: 64 rows x 512 codes at `bits` bits.
        assert q.codes.nbytes == 64 * 512 * bits // 8
    assert aq.quantize(w, bits=4).error(w)["rel_rmse"] < 0.08
    assert aq.quantize(w, bits=8).error(w)["rel_rmse"] < 0.006


def test_codes_follow_documented_bit_order() -> None:
    w = np.arange(16, dtype=np.float32)[None, :]
    q = aq.quantize(w, bits=4, group_size=32, scheme="asym", method="minmax", scale_dtype="f16")
    assert q.codes.tobytes() == bytes([0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE])
    np.testing.assert_array_equal(_unpack(q.codes, 16, 4, 1)[0], np.arange(16))
    np.testing.assert_array_equal(q.dequantize(), w)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: "-".join(str(v) for v in f.values()))
def test_every_format_round_trips_within_its_grid(fmt: dict[str, object]) -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_t(5, size=(5, 200)).astype(np.float32) * 0.02  # 200: tail groups
    q = aq.quantize(w, **fmt)  # type: ignore[arg-type]
    y = q.dequantize()
    assert y.shape == w.shape and np.isfinite(y).all()
    rel = q.error(w)["rel_rmse"]
    # INT2 symmetric min/max uses three levels: only "better than all zeros" is promised.
    limit = {2: 0.95, 4: 0.2, 8: 0.012}[fmt["bits"]]  # type: ignore[index]
    assert rel < limit, (fmt, rel)
    codes = _unpack(q.codes, 200, fmt["bits"], 5)  # type: ignore[arg-type]
    assert codes.max() <= 2 ** fmt["bits"] - 1  # type: ignore[operator]


@settings(max_examples=150, deadline=None)
@given(
    w=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=70),
        elements=st.floats(-100, 100, width=32),
    ),
    bits=st.sampled_from([2, 4, 8]),
    group=st.sampled_from([32, 64, 0]),
    scheme=st.sampled_from(["asym", "sym"]),
    storage=st.sampled_from(["f16", "f32", "q6", "q7", "q8"]),
)
# A subnormal f16 step: rounding it up adds 2^-24, far more than 2^-10 of it.
@example(w=np.array([[2.94842e-07]], np.float32), bits=2, group=32, scheme="asym", storage="f16")
def test_minmax_error_is_at_most_half_a_step(
    w: np.ndarray, bits: int, group: int, scheme: str, storage: str
) -> None:
    q = aq.quantize(
        w, bits=bits, group_size=group, scheme=scheme, method="minmax", scale_dtype=storage
    )
    y = q.dequantize()
    assert y.shape == w.shape
    rows = w.shape[0]
    x = w.reshape(rows, -1).astype(np.float64)
    g = x.shape[1] if group == 0 else group
    qmax = 2**bits - 1
    half = 2 ** (bits - 1) - 1
    f16_tiny = 2.0**-24  # smallest f16 step: f16 scales never go below it
    for r in range(rows):
        segs = [x[r, s : s + g] for s in range(0, x.shape[1], g)]
        lo = np.array([min(v.min(), 0.0) for v in segs])
        hi = np.array([max(v.max(), 0.0) for v in segs])
        step = (hi - lo) / qmax if scheme == "asym" else np.maximum(-lo, hi) / half
        if storage == "f32":
            bound = 0.5 * step * (1 + 1e-6)
        elif storage == "f16":  # rounded up to the next f16: one ulp, 2^-24 when subnormal
            bound = 0.5 * np.maximum(step * (1 + 2**-10), step + f16_tiny)
        else:
            # qN: offsets round up to a multiple of dmin, the step up to a multiple of d, both
            # row super-scales (f16, rounded up) of the largest group's offset and step / cmax.
            cmax = 2 ** int(storage[1]) - 1
            dmin = ((-lo).max() / cmax * (1 + 2**-10) + f16_tiny) if scheme == "asym" else 0.0
            t = step + dmin / qmax
            d = t.max() / cmax * (1 + 2**-10) + f16_tiny
            bound = 0.5 * (t + d)
        for k, seg in enumerate(segs):
            e = np.abs(y.reshape(rows, -1)[r, k * g : k * g + len(seg)] - seg).max()
            # (+1e-37: a step below f32's normal range cannot be represented exactly)
            assert e <= bound[k] + 1e-6 * np.abs(seg).max() + 1e-37, (r, k, e, bound[k])


@settings(max_examples=60, deadline=None)
@given(c=st.floats(-1000, 1000, width=32).filter(lambda v: v == 0 or abs(v) > 1e-3))
def test_constant_tensors_have_no_nan(c: float) -> None:
    w = np.full((3, 96), c, np.float32)
    for storage in ("f16", "f32", "q6", "q7"):
        y = aq.quantize(w, bits=4, scale_dtype=storage).dequantize()
        assert np.isfinite(y).all()
        if c == 0:
            assert (y == 0).all()
        else:
            np.testing.assert_allclose(y, c, rtol=1e-2)


def test_inputs_numpy_torch_and_dtypes() -> None:
    w = np.random.default_rng(2).normal(0, 0.02, (32, 256)).astype(np.float32)
    ref = aq.quantize(w, bits=4)
    same = aq.quantize(torch.from_numpy(w), bits=4)
    assert ref.codes.tobytes() == same.codes.tobytes()
    for arr in (
        w.astype(np.float16),
        w.astype(ml_dtypes.bfloat16),
        torch.from_numpy(w).half(),
        torch.from_numpy(w).bfloat16(),
    ):
        q = aq.quantize(arr, bits=4)
        assert q.error(arr)["rel_rmse"] < 0.09
    q = aq.quantize(torch.from_numpy(w).bfloat16(), bits=8)
    assert q.metadata["source_dtype"] == "BF16"
    assert q.dequantize(torch.bfloat16).dtype == torch.bfloat16
    assert q.dequantize(np.float16).dtype == np.float16
    assert q.dequantize("bfloat16").dtype == ml_dtypes.bfloat16
    # A transposed (non-contiguous) view is accepted: it is made contiguous first.
    assert aq.quantize(w.T, bits=4).shape == (256, 32)


def test_bad_input_errors() -> None:
    w = np.ones((4, 64), np.float32)
    w[1, 3] = np.nan
    w[2, 5] = np.inf
    # A data error with its own class and code, not a configuration mistake (issue 13, bug 8).
    with pytest.raises(aq.InvalidDataError, match=r"'blocks\.0\.attn\.weight'.*2 NaN or Inf") as e:
        aq.quantize(w, name="blocks.0.attn.weight")
    assert e.value.code == "NonFinite"
    assert isinstance(e.value, aq.QuantizationError)
    assert not isinstance(e.value, aq.ConfigurationError)
    ok = np.ones((4, 64), np.float32)
    with pytest.raises(aq.ConfigurationError):
        aq.quantize(ok, bits=5)
    with pytest.raises(aq.ConfigurationError):
        aq.quantize(ok, group_size=48)
    with pytest.raises(aq.ConfigurationError):
        aq.quantize(ok, scheme="nf4")
    with pytest.raises(aq.ConfigurationError):
        aq.quantize(ok.astype(np.int32))
    with pytest.raises(aq.InvalidDataError) as e:
        aq.quantize(np.full((1, 32), 1e30, np.float32), method="minmax", scale_dtype="f16")
    assert e.value.code == "ScaleOverflow"


def test_thread_count_does_not_change_bytes() -> None:
    w = np.random.default_rng(3).normal(0, 1, (33, 300)).astype(np.float32)
    a = aq.quantize(w, bits=4, threads=1)
    b = aq.quantize(w, bits=4, threads=2)
    for f in ("codes", "scales", "zeros", "super_scales"):
        assert getattr(a, f).tobytes() == getattr(b, f).tobytes()


@pytest.mark.parametrize("scheme", ["asym", "sym"])
@pytest.mark.parametrize("scale_dtype", ["f16", "f32", "q6"])
def test_int3_sits_between_int2_and_int4(tmp_path: Path, scheme: str, scale_dtype: str) -> None:
    """INT3 (issue 14): 3 bits a code, 8 codes in 3 bytes; its error lies between INT2's and
    INT4's, and it survives the model file."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.02, (64, 256)).astype(np.float32)
    errs = {}
    for b in (2, 3, 4):
        q = aq.quantize(w, bits=b, scheme=scheme, scale_dtype=scale_dtype)
        errs[b] = float(np.linalg.norm(q.dequantize(np.float32) - w) / np.linalg.norm(w))
    assert errs[4] < errs[3] < errs[2]
    q3 = aq.quantize(w, bits=3, scheme=scheme, scale_dtype=scale_dtype)
    assert q3.metadata["format"].startswith("int3-")
    assert len(q3.codes) == 64 * 256 * 3 // 8
    aq.save(tmp_path / "m.parquet", {"w": q3})
    back = aq.open(tmp_path / "m.parquet").dequantize("w")
    np.testing.assert_array_equal(back, q3.dequantize(np.float32))


def test_compact_profile_is_int3() -> None:
    c = aq.DiffusionQuantConfig.from_profile("compact")
    assert c.bits == 3 and 0.12 < c.max_rel_rmse < 0.40
