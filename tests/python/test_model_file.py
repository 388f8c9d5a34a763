"""The Extended Parquet V2 model file from Python: round trips, other readers, seed schema."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import arrowquant as aq

FORMATS = [
    dict(bits=b, group_size=g, scheme=s, scale_dtype=d)
    for b in (2, 4, 8)
    for g in (32, 128, 0)
    for s in ("asym", "sym")
    for d in ("f16", "f32", "q6", "q7")
]


def _weights(dtype: object, shape: tuple[int, ...] = (24, 200)) -> np.ndarray:
    w = np.random.default_rng(0).normal(0, 0.02, shape).astype(np.float32)
    return w.astype(dtype)  # type: ignore[call-overload,no-any-return]


@pytest.mark.parametrize(
    "src", [np.float32, np.float16, ml_dtypes.bfloat16], ids=["f32", "f16", "bf16"]
)
def test_round_trip_is_bit_identical_for_every_format(tmp_path: Path, src: object) -> None:
    w = _weights(src)
    tensors = {f"t{i}": aq.quantize(w, **f) for i, f in enumerate(FORMATS)}  # type: ignore[arg-type]
    path = tmp_path / "m.parquet"
    aq.save(path, tensors, max_chunk_bytes=700)  # small chunks: tensors span several rows
    model = aq.open(path)
    assert len(model) == len(FORMATS)
    for name, q in tensors.items():
        back = model.tensor(name)
        for f in ("codes", "scales", "zeros", "super_scales"):
            assert getattr(back, f).tobytes() == getattr(q, f).tobytes(), (name, f)
        assert back.metadata == q.metadata
        np.testing.assert_array_equal(model.dequantize(name), q.dequantize())
        assert model.info(name)["rows"] > 1


def test_raw_tensors_round_trip_byte_exact(tmp_path: Path) -> None:
    raw = {
        "f32": np.arange(10, dtype=np.float32),
        "f16": np.arange(6, dtype=np.float16).reshape(2, 3),
        "bf16": np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16),
        "ids": np.arange(7, dtype=np.int64)[None],
        "mask": np.array([True, False, True]),
        "empty": np.zeros((0, 3), np.float32),
    }
    aq.save(tmp_path / "r.parquet", raw)
    model = aq.open(tmp_path / "r.parquet")
    for name, a in raw.items():
        got = model.raw(name)
        assert got.shape == a.shape and got.tobytes() == a.tobytes(), name
    sd = aq.load_state_dict(tmp_path / "r.parquet", dtype=torch.float32)
    assert sd["ids"].dtype == torch.int64 and sd["ids"].tolist() == [list(range(7))]
    assert sd["f16"].dtype == torch.float32


def test_load_state_dict_and_export(tmp_path: Path) -> None:
    w = _weights(np.float32, (64, 256))
    q = aq.quantize(w, bits=4)
    bias = np.linspace(-1, 1, 64).astype(np.float32)
    aq.save(tmp_path / "m.parquet", {"lin.weight": q, "lin.bias": bias}, modality="image")
    for dt in (torch.float16, torch.bfloat16, torch.float32):
        sd = aq.load_state_dict(tmp_path / "m.parquet", dtype=dt, threads=2)
        assert sd["lin.weight"].dtype == dt and tuple(sd["lin.weight"].shape) == (64, 256)
        ref = torch.from_numpy(q.dequantize()).to(dt)
        assert torch.equal(sd["lin.weight"], ref)
    aq.export_safetensors(tmp_path / "m.parquet", tmp_path / "out.safetensors", dtype="float16")
    ck = aq.load_checkpoint(str(tmp_path / "out.safetensors"))
    np.testing.assert_array_equal(ck.numpy("lin.weight"), q.dequantize(np.float16))
    assert not list(tmp_path.glob("*.tmp-*"))


def test_metadata_and_provenance(tmp_path: Path) -> None:
    q = aq.quantize(_weights(np.float32), bits=8)
    aq.save(
        tmp_path / "m.parquet",
        {"w": q},
        recipe={"profile": "cloud"},
        source={"model": "ddpm-digits", "sha256": "ab" * 32},
        modality="image",
        metrics={"w": q.error(_weights(np.float32))},
    )
    meta = aq.open(tmp_path / "m.parquet").metadata
    assert meta["arrowquant.format"] == "arrowquant-parquet"
    assert meta["arrowquant.format_version"] == "2.0"
    assert meta["arrowquant.tool_version"] == aq.__version__
    assert meta["arrowquant.recipe"] == {"profile": "cloud"}
    assert meta["arrowquant.source"]["model"] == "ddpm-digits"
    assert meta["arrowquant.totals"]["quantized_parameters"] == q.shape[0] * q.shape[1]
    assert meta["arrowquant.created"].endswith("Z")
    info = aq.open(tmp_path / "m.parquet").info("w")
    assert info["metrics"]["rel_rmse"] == pytest.approx(q.error(_weights(np.float32))["rel_rmse"])


def test_file_size_is_payload_plus_fixed_overhead(tmp_path: Path) -> None:
    w = _weights(np.float32, (512, 1024))
    tensors = {f"layer{i}.weight": aq.quantize(w * (i + 1), bits=4) for i in range(8)}
    aq.save(tmp_path / "m.parquet", tensors)
    payload = sum(q.nbytes for q in tensors.values())
    size = (tmp_path / "m.parquet").stat().st_size
    overhead = size - payload
    # Measured (docs/format.md): about 1.5 KB per file (footer, key/values) and 3.3 KB per row
    # group (33 column chunks: page headers and footer entries); these tensors have one each.
    # Pinned here with slack so that a regression shows.
    assert overhead < 6144 + 3600 * len(tensors), overhead
    assert size <= 1.02 * payload + 6144 + 3600 * len(tensors)


def test_other_readers_open_the_file(tmp_path: Path) -> None:
    import duckdb
    import polars as pl

    aq.save(
        tmp_path / "m.parquet",
        {"a.weight": aq.quantize(_weights(np.float32), bits=4), "a.bias": np.ones(24, np.float32)},
    )
    p = str(tmp_path / "m.parquet")
    t = pq.read_table(p, columns=["layer_name", "quant_type", "bits", "shape"])
    assert t.column("layer_name").to_pylist() == ["a.weight", "a.bias"]
    kv = pq.read_metadata(p).metadata
    assert kv[b"arrowquant.format"] == b"arrowquant-parquet"
    rows = duckdb.sql(
        f"SELECT layer_name, bits, num_params FROM '{p}' ORDER BY layer_name"
    ).fetchall()
    assert rows == [("a.bias", 0, 24), ("a.weight", 4, 24 * 200)]
    # The key/values are the footer's own (no second copy in an embedded Arrow schema), and
    # pyarrow shows them as the schema's metadata all the same.
    assert b"ARROW:schema" not in kv
    assert pq.read_table(p).schema.metadata[b"arrowquant.format"] == b"arrowquant-parquet"
    rg = pq.ParquetFile(p).metadata.row_group(0)
    codecs = {rg.column(i).path_in_schema: rg.column(i).compression for i in range(rg.num_columns)}
    assert codecs["data"] == "UNCOMPRESSED" and codecs["layer_name"] == "ZSTD", codecs
    meta = duckdb.sql(f"SELECT key, value FROM parquet_kv_metadata('{p}')").fetchall()
    assert any(k == b"arrowquant.format_version" and v == b"2.0" for k, v in meta)
    df = pl.read_parquet(p, columns=["layer_name", "quant_type", "bits"])
    assert df.filter(pl.col("quant_type") == "int4")["layer_name"].to_list() == ["a.weight"]


def _seed_file(path: Path, *, data_len_off: int = 0, quant_type: str = "int8") -> np.ndarray:
    """A file in the seed project's base V2 schema (one code per byte, float scales/zeros)."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.02, (4, 64)).astype(np.float32)
    g = 32
    groups = w.reshape(-1, g)
    lo, hi = groups.min(1), groups.max(1)
    scale = (hi - lo) / 255
    zp = np.round(-lo / scale)
    codes = np.clip(np.round(groups / scale[:, None] + zp[:, None]), 0, 255).astype(np.uint8)
    zp32, scale32 = zp[:, None].astype(np.float32), scale[:, None].astype(np.float32)
    expect = ((codes.astype(np.float32) - zp32) * scale32).reshape(w.shape)
    bias = np.linspace(0, 1, 4).astype(np.float32)
    table = pa.table(
        {
            "layer_name": ["blk.weight", "blk.bias"],
            "shape": [[4, 64], [4]],
            "dtype": ["float32", "float32"],
            "data": [codes.tobytes()[: len(codes.tobytes()) - data_len_off], bias.tobytes()],
            "num_params": [256, 4],
            "quant_type": [quant_type, "fp32"],
            "scales": [scale.astype(np.float32).tolist(), []],
            "zero_points": [zp.astype(np.float32).tolist(), []],
            "quant_axis": [0, -1],
            "group_size": [g, 0],
            "is_diffusion_model": [True, True],
            "modality": ["image", "image"],
            "time_aware_quant_json": [json.dumps({"num_groups": 4}), None],
            "spatial_quant_json": [None, None],
            "activation_stats_json": [None, None],
        }
    )
    pq.write_table(table, path)
    return expect


def test_reads_seed_base_schema(tmp_path: Path) -> None:
    expect = _seed_file(tmp_path / "seed.parquet")
    model = aq.open(tmp_path / "seed.parquet")
    assert model.legacy
    np.testing.assert_allclose(model.dequantize("blk.weight"), expect, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(
        model.dequantize("blk.bias"), np.linspace(0, 1, 4).astype(np.float32)
    )
    sd = aq.load_state_dict(tmp_path / "seed.parquet", dtype=torch.float32)
    assert tuple(sd["blk.weight"].shape) == (4, 64)


def test_bad_files_are_typed_errors(tmp_path: Path) -> None:
    _seed_file(tmp_path / "short.parquet", data_len_off=3)
    model = aq.open(tmp_path / "short.parquet")
    with pytest.raises(aq.MalformedModelError, match="blk.weight"):
        model.dequantize("blk.weight")
    _seed_file(tmp_path / "qt.parquet", quant_type="int3")
    with pytest.raises(aq.UnsupportedError, match="int3"):
        aq.open(tmp_path / "qt.parquet")
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "other.parquet")
    with pytest.raises(aq.MalformedModelError, match="not an ArrowQuant model file"):
        aq.open(tmp_path / "other.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(aq.MalformedModelError):
        aq.open(tmp_path / "junk.parquet")
    with pytest.raises(aq.ModelNotFoundError):
        aq.open(tmp_path / "missing.parquet")
    # A mistyped payload length in our own format: codes one byte short.
    q = aq.quantize(_weights(np.float32), bits=4)
    aq.save(tmp_path / "m.parquet", {"w": q})
    t = pq.read_table(tmp_path / "m.parquet")
    data = t.column("data").to_pylist()
    kv = pq.read_metadata(tmp_path / "m.parquet").metadata
    meta = {k: v for k, v in kv.items() if k != b"ARROW:schema"}
    t = t.set_column(
        t.schema.get_field_index("data"), "data", pa.array([data[0][:-1]], pa.large_binary())
    )
    t = t.replace_schema_metadata(meta)
    pq.write_table(t, tmp_path / "cut.parquet")
    with pytest.raises(aq.MalformedModelError, match="codes hold"):
        aq.open(tmp_path / "cut.parquet").tensor("w")
