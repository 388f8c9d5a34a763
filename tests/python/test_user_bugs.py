"""Regression tests for the bugs a new user hit (issue 13): each failed before its fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import safetensors.numpy
import torch

import arrowquant as aq
from arrowquant import cli

ENV_KEYS = [k for k in os.environ if k.startswith("ARROW_QUANT_")]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ENV_KEYS:
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("m")
    tensors = {
        "blocks.0.attn.to_q.weight": rng.normal(0, 0.02, (64, 64)).astype(np.float32),
        "blocks.0.ff.net.weight": rng.normal(0, 0.02, (128, 64)).astype(np.float32),
        "blocks.0.ff.net.bias": np.full(128, 1e-8, np.float32),  # f16 flushes these to 0
        "blocks.0.norm.weight": np.full(64, 70000.0, np.float32),  # beyond f16's 65504
        "blocks.0.norm.bias": rng.normal(0, 1, 64).astype(np.float32),
        "pos_ids": np.arange(16, dtype=np.int64),
    }
    path = d / "model.safetensors"
    safetensors.numpy.save_file(tensors, str(path))
    return path


# ---- 1. precedence: defaults < profile < YAML < environment < flags / keyword arguments ------

ENV = {
    "ARROW_QUANT_BITS": "8",  # int
    "ARROW_QUANT_MAX_REL_RMSE": "0.5",  # float
    "ARROW_QUANT_SCALE_DTYPE": "f32",  # enum
    "ARROW_QUANT_ADAPTIVE_GROUPS": "0",  # bool
    "ARROW_QUANT_OVERRIDES": "ff=8",  # list
}


def _report_config(out: Path) -> dict[str, object]:
    return dict(json.loads((out / "report.json").read_text())["config"])


def test_flags_beat_environment_on_the_command_line(
    small_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    out = tmp_path / "flags"
    rc = cli.main(
        [
            "quantize", str(small_model), str(out), "--json",
            "--bits", "4", "--max-rel-rmse", "0.2", "--scale-dtype", "q7",
            "--adaptive-groups", "--override", "attn=keep",
        ]
    )  # fmt: skip
    assert rc == 0
    c = _report_config(out)
    assert (c["bits"], c["max_rel_rmse"], c["scale_dtype"]) == (4, 0.2, "q7")
    assert c["adaptive_groups"] is True and c["overrides"] == ["attn=keep"]
    # Without the flags the environment applies, over the YAML and the profile.
    yaml = tmp_path / "c.yaml"
    yaml.write_text("bits: 2\nmax_rel_rmse: 0.3\nscale_dtype: f16\ntime_groups: 3\n")
    out2 = tmp_path / "env"
    assert cli.main(["quantize", str(small_model), str(out2), "--json", "--config", str(yaml),
                     "--profile", "cloud"]) == 0  # fmt: skip
    c = _report_config(out2)
    assert (c["bits"], c["max_rel_rmse"], c["scale_dtype"]) == (8, 0.5, "f32")
    assert c["adaptive_groups"] is False and c["overrides"] == ["ff=8"]
    assert c["time_groups"] == 3  # YAML beats the profile (cloud: 20)
    assert c["profile"] == "cloud"


def test_keyword_arguments_beat_environment_in_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    c = aq.DiffusionQuantConfig.from_profile(
        "edge",
        bits=4,
        max_rel_rmse=0.2,
        scale_dtype="q7",
        adaptive_groups=True,
        overrides=["attn=keep"],
    )
    assert (c.bits, c.max_rel_rmse, c.scale_dtype) == (4, 0.2, "q7")
    assert c.adaptive_groups is True and c.overrides == ["attn=keep"]
    e = aq.DiffusionQuantConfig.resolve(
        profile="edge", config={"bits": 2, "time_groups": 3, "act_clip": "minmax"}
    )
    assert (e.bits, e.max_rel_rmse, e.scale_dtype, e.adaptive_groups) == (8, 0.5, "f32", False)
    assert e.overrides == ["ff=8"] and e.time_groups == 3 and e.act_clip == "minmax"
    # environ={} ignores the process environment: profile values remain.
    assert aq.DiffusionQuantConfig.resolve(profile="edge", environ={}).bits == 2
    monkeypatch.setenv("ARROW_QUANT_BITS", "three")
    with pytest.raises(aq.ConfigurationError, match="ARROW_QUANT_BITS"):
        aq.DiffusionQuantConfig.resolve()


# ---- 2. the CLI's output folder is a model for every loader ---------------------------------


def test_output_folder_opens_everywhere(small_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli.main(["quantize", str(small_model), str(out), "--json"]) == 0
    m = aq.open(out)
    assert m.path.endswith("model.aq.parquet")
    sd = aq.load_state_dict(out, dtype=torch.float32)
    assert sd["blocks.0.attn.to_q.weight"].shape == (64, 64)
    assert aq.ArrowQuantV2().validate_quality(small_model, out)
    assert cli.main(["inspect", str(out), "--json"]) == 0
    with pytest.raises(aq.ModelNotFoundError) as e:
        aq.open(tmp_path)
    assert str(e.value).count("model.aq.parquet") == 1  # one clear message, said once
    assert "Cannot open for reading" not in str(e.value)


# ---- 3. a library call leaves pyarrow's process-wide pools alone ----------------------------


def test_open_and_load_leave_pyarrow_thread_pools_alone(small_model: Path, tmp_path: Path) -> None:
    before = (pa.cpu_count(), pa.io_thread_count())
    out = tmp_path / "o"
    aq.ArrowQuantV2().quantize_diffusion_model(small_model, out)
    m = aq.open(out)
    m.load(m.names(), np.float32)
    aq.load_state_dict(out)
    aq.save(tmp_path / "x.aq.parquet", {"w": aq.quantize(np.ones((4, 64), np.float32))})
    aq.load_checkpoint(str(small_model)).write_tensor_table(str(tmp_path / "t.parquet"))
    assert (pa.cpu_count(), pa.io_thread_count()) == before


# ---- 4 and 5. provenance in the Arrow schema; JSON written by a JSON library -----------------


def test_provenance_in_arrow_schema_and_valid_json(tmp_path: Path) -> None:
    weird = tmp_path / 'we"ird\\dir'
    weird.mkdir()
    src = weird / "m.safetensors"
    safetensors.numpy.save_file(
        {"w": np.random.default_rng(1).normal(0, 1, (32, 64)).astype(np.float32)}, str(src)
    )
    out = tmp_path / "out"
    aq.ArrowQuantV2().quantize_diffusion_model(src, out)
    f = out / "model.aq.parquet"
    meta = pq.read_table(f).schema.metadata
    assert meta is not None
    assert meta[b"arrowquant.format_version"] == b"2.0"
    for key in (b"arrowquant.recipe", b"arrowquant.totals", b"arrowquant.source"):
        json.loads(meta[key])  # every JSON value parses
    assert json.loads(meta[b"arrowquant.source"])["path"] == str(src)
    assert json.loads(meta[b"arrowquant.totals"])["tensors"] == 1
    assert pq.ParquetFile(f).schema_arrow.metadata == meta
    import polars

    assert polars.read_parquet_schema(str(f))  # other readers still open it
    import duckdb

    assert duckdb.sql(f"select count(*) from read_parquet('{f}')").fetchall() == [(1,)]


# ---- 6. one source of defaults ---------------------------------------------------------------


def test_default_config_is_the_local_profile() -> None:
    assert aq.DiffusionQuantConfig() == aq.DiffusionQuantConfig.resolve(environ={})
    assert aq.DiffusionQuantConfig() == aq.DiffusionQuantConfig.from_profile("local")
    assert aq.DiffusionQuantConfig(profile="edge") == aq.DiffusionQuantConfig.from_profile("edge")
    assert aq.DiffusionQuantConfig(profile="cloud", bits=4).bits == 4


# ---- 8. error taxonomy: data errors are not configuration errors ----------------------------


def test_nan_weight_is_a_data_error_in_the_job(tmp_path: Path) -> None:
    w = np.ones((32, 64), np.float32)
    w[3, 3] = np.nan
    src = tmp_path / "nan.safetensors"
    safetensors.numpy.save_file({"blocks.0.w": w}, str(src))
    with pytest.raises(aq.InvalidDataError, match="blocks.0.w") as e:
        aq.ArrowQuantV2().quantize_diffusion_model(src, tmp_path / "o")
    assert e.value.code == "NonFinite"
    assert not (tmp_path / "o").exists()
    assert cli.main(["quantize", str(src), str(tmp_path / "o2")]) == 2


# ---- 9. kept tensors keep their range --------------------------------------------------------


def test_kept_tensors_never_flush_or_overflow(small_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    report = aq.ArrowQuantV2().quantize_diffusion_model(small_model, out)
    sd = aq.load_state_dict(out, dtype=torch.float32)
    bias = sd["blocks.0.ff.net.bias"].numpy()
    np.testing.assert_allclose(bias, 1e-8, rtol=4e-3)  # was 0 (f16 flush)
    np.testing.assert_allclose(sd["blocks.0.norm.weight"].numpy(), 70000.0, rtol=4e-3)
    layers = {r["name"]: r for r in report.layers}
    assert layers["blocks.0.ff.net.bias"]["format"] == "BF16"
    assert "F16 would lose values" in layers["blocks.0.ff.net.bias"]["why"]
    assert layers["blocks.0.norm.weight"]["format"] == "BF16"
    assert "1 overflow" not in layers["blocks.0.norm.bias"]["why"]
    assert layers["blocks.0.norm.bias"]["format"] == "F16"  # ordinary values stay f16
    assert sd["pos_ids"].dtype == torch.int64


# ---- 10. seed-schema files with quant_type none and any dtype --------------------------------


@pytest.mark.parametrize(
    ("dtype", "values"),
    [
        ("int64", np.arange(6, dtype=np.int64)),
        ("int32", np.arange(6, dtype=np.int32)),
        ("uint8", np.arange(6, dtype=np.uint8)),
        ("bool", np.array([1, 0, 1, 1, 0, 0], dtype=np.bool_)),
        ("float32", np.linspace(-1, 1, 6, dtype=np.float32)),
        ("bfloat16", np.linspace(-1, 1, 6).astype(ml_dtypes.bfloat16)),
        ("I16", np.arange(6, dtype=np.int16)),
    ],
)
def test_seed_schema_none_rows_of_any_dtype(tmp_path: Path, dtype: str, values: np.ndarray) -> None:
    table = pa.table(
        {
            "layer_name": ["t"],
            "shape": [[2, 3]],
            "dtype": [dtype],
            "data": [values.tobytes()],
            "num_params": [6],
            "quant_type": ["none"],
            "scales": pa.array([[]], pa.list_(pa.float32())),
            "zero_points": pa.array([[]], pa.list_(pa.float32())),
            "quant_axis": [0],
            "group_size": [0],
        }
    )
    f = tmp_path / "seed.parquet"
    pq.write_table(table, f)
    m = aq.open(f)
    assert m.legacy
    got = m.load(["t"], np.float32)[0]
    want = values.reshape(2, 3)
    if values.dtype.kind == "f" or values.dtype == ml_dtypes.bfloat16:
        np.testing.assert_array_equal(got, want.astype(np.float32))
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_seed_schema_unknown_dtype_names_the_reason(tmp_path: Path) -> None:
    table = pa.table(
        {
            "layer_name": ["t"], "shape": [[2]], "dtype": ["complex64"], "data": [b"12345678"],
            "num_params": [2], "quant_type": ["none"],
            "scales": pa.array([[]], pa.list_(pa.float32())),
            "zero_points": pa.array([[]], pa.list_(pa.float32())),
            "quant_axis": [0], "group_size": [0],
        }
    )  # fmt: skip
    f = tmp_path / "seed.parquet"
    pq.write_table(table, f)
    with pytest.raises(aq.UnsupportedError, match="dtype 'complex64'"):
        aq.open(f)


def test_calibration_does_not_import_eval() -> None:
    """One module drives a diffusion model (arrowquant.diffusion); calibration and evaluation
    both use it, and neither imports the other."""
    code = (
        "import sys, arrowquant.calibration, arrowquant.calibration.capture\n"
        "bad = sorted(m for m in sys.modules if m.startswith('arrowquant.eval'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_footer_claiming_huge_row_counts_is_refused_before_allocating() -> None:
    """Fuzzer finding (fuzz_model_reader, 2026-12-02): a footer claiming ~10^11 rows made the
    reader ask Arrow for a 2.7 TB buffer. The claim is checked against a limit first."""
    from arrowquant.errors import LimitExceededError

    seed = Path(__file__).resolve().parents[1] / "fuzz/corpus/fuzz_model_reader"
    with pytest.raises(LimitExceededError, match="more than 1000000 rows"):
        aq.open(seed / "regress-huge-row-count.parquet")
