"""A decoder of the model file written from docs/format.md ("Decoding contract") alone, with
pyarrow and numpy: it does not use arrowquant. Tests compare it bit for bit with the reader."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pyarrow.parquet as pq

RAW = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U64": np.uint64,
    "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
}  # fmt: skip


def unpack(buf: bytes, count: int, bits: int) -> np.ndarray:
    """`count` unsigned `bits`-bit values from a little-endian bit stream."""
    stream = np.unpackbits(np.frombuffer(buf, np.uint8), bitorder="little")
    fields = stream[: count * bits].reshape(count, bits).astype(np.uint32)
    return (fields << np.arange(bits, dtype=np.uint32)).sum(axis=1).astype(np.uint32)


def _f16(buf: bytes) -> np.ndarray:
    return np.frombuffer(buf, "<f2").astype(np.float32)


def dequantize(r: dict[str, Any], payload: dict[str, bytes]) -> np.ndarray:
    shape = list(r["shape"])
    n = int(np.prod(shape)) if shape else 1
    rows = shape[0] if len(shape) >= 2 else 1  # 1-D tensors are one row
    cols = n // rows if rows else 0
    bits, g = r["bits"], r["group_size"] or cols
    groups = -(-cols // g)
    sym, sd = r["scheme"] == "sym", r["scale_dtype"]
    code_b = -(-cols * bits // 8)
    out = np.empty((rows, cols), np.float32)
    for i in range(rows):
        codes = unpack(payload["data"][i * code_b : (i + 1) * code_b], cols, bits)
        if sd in ("f16", "f32"):
            w = 2 if sd == "f16" else 4
            raw = payload["scales"][i * groups * w : (i + 1) * groups * w]
            scale = _f16(raw) if sd == "f16" else np.frombuffer(raw, "<f4")
            if sym:
                offset = scale * np.float32(2 ** (bits - 1))
            else:
                zb = -(-groups * bits // 8)
                z = unpack(payload["zero_points"][i * zb : (i + 1) * zb], groups, bits)
                offset = scale * z.astype(np.float32)
        else:
            nb = int(sd[1])
            sb = -(-groups * nb // 8)
            ls = unpack(payload["scales"][i * sb : (i + 1) * sb], groups, nb)
            per_row = 2 if sym else 4  # f16 d, then (asymmetric) f16 dmin, row by row
            sup = _f16(payload["super_scales"][i * per_row : (i + 1) * per_row])
            scale = sup[0] * ls.astype(np.float32)
            if sym:
                offset = scale * np.float32(2 ** (bits - 1))
            else:
                lm = unpack(payload["zero_points"][i * sb : (i + 1) * sb], groups, nb)
                offset = sup[1] * lm.astype(np.float32)
        gi = np.arange(cols) // g
        out[i] = codes.astype(np.float32) * scale[gi] - offset[gi]  # multiply, then subtract
    return out.reshape(shape)


def decode(path: str) -> dict[str, np.ndarray]:
    """Every tensor as the reader's load gives it in float32 (integer tensors as stored)."""
    rows = pq.read_table(path).to_pylist()
    tensors: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        tensors.setdefault(r["layer_name"], []).append(r)
    out: dict[str, np.ndarray] = {}
    for name, parts in tensors.items():
        parts.sort(key=lambda r: r["chunk_index"])
        assert [p["chunk_index"] for p in parts] == list(range(parts[0]["num_chunks"]))
        first = parts[0]  # every chunk repeats the whole tensor's shape and fields
        cols = ("data", "scales", "zero_points", "super_scales")
        payload = {c: b"".join(p[c] for p in parts) for c in cols}
        if first["quant_type"] == "raw":
            a = np.frombuffer(payload["data"], RAW[first["dtype"]]).reshape(first["shape"])
            if first["dtype"] not in ("F32", "F16", "BF16"):
                out[name] = a.copy()
                continue
            w = a.astype(np.float32)
        else:
            w = dequantize(first, payload)
        s = first["equalization_scales"]
        if s:  # stored W / s; W = (W / s) * s along axis 1, kernel positions share s_i
            view = [1, len(s)] + [1] * (w.ndim - 2)
            w = w * np.asarray(s, np.float32).reshape(view)
        out[name] = w
    return out
