"""Calibration data, activation statistics, time groups, equalization, and the torch runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import arrowquant as aq
import arrowquant._core as _core
from arrowquant.calibration import calibrate, load_calibration
from arrowquant.diffusion import initial_noise, load_reference, sample
from arrowquant.errors import ConfigurationError, UnsupportedError
from arrowquant.torch import ActQuant, apply, fake_quant, timestep

MODELS = Path(__file__).resolve().parents[2] / "models"
DIT = MODELS / "digits-dit"
DDPM = MODELS / "digits-ddpm"


def test_jsonl_parquet_and_synthetic(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    f.write_text('{"label": 3}\n\n{"class": 7}\n')
    c = load_calibration(f)
    assert c.count == 2 and c.labels == [3, 7] and len(c.digest) == 64
    pq.write_table(pa.table({"prompt": ["a cat", "a dog", "a fox"]}), tmp_path / "p.parquet")
    p = load_calibration(tmp_path / "p.parquet")
    assert p.texts == ["a cat", "a dog", "a fox"]
    assert load_calibration("synthetic:5").count == 5
    assert load_calibration("synthetic:5").digest != load_calibration("synthetic:6").digest


@pytest.mark.parametrize(
    "content, needle",
    [
        ("", "no rows"),
        ('{"label": 1}\nnot json\n', "c.jsonl:2"),
        ("[1, 2]\n", "JSON object"),
        ('{"label": -1}\n', "integer >= 0"),
        ('{"image": "x.png"}\n', "has none of"),
        ('{"label": 1}\n{"text": "a"}\n', "mix"),
    ],
)
def test_bad_calibration_files(tmp_path: Path, content: str, needle: str) -> None:
    f = tmp_path / "c.jsonl"
    f.write_text(content)
    with pytest.raises(ConfigurationError, match=needle):
        load_calibration(f)


def test_damaged_calibration_data_is_a_configuration_error(tmp_path: Path) -> None:
    """Findings of tests/fuzz/fuzz_calibration_data.py: each raised a bare Python error."""
    import datasets

    (tmp_path / "bin.jsonl").write_bytes(b'{"prompt": "a"}\n{"lab\x8a": 7}\n')
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "\n")
    pq.write_table(pa.table({"label": [1]}), tmp_path / "name.parquet")
    raw = (tmp_path / "name.parquet").read_bytes()
    (tmp_path / "name.parquet").write_bytes(raw.replace(b"label", b"l\xe2\x28el"))
    (tmp_path / "cut.parquet").write_bytes(raw[: len(raw) // 2])
    datasets.Dataset.from_dict({"label": [0, 1]}).save_to_disk(str(tmp_path / "ds"))
    (tmp_path / "ds" / "state.json").write_text('{"_data_files": 3}')
    for name, needle in [
        ("bin.jsonl", "bin.jsonl:2: not UTF-8"),
        ("deep.jsonl", "deep.jsonl:1: JSON nested too deeply"),
        ("name.parquet", "not a readable Parquet file"),
        ("cut.parquet", "not a readable Parquet file"),
        ("ds", "ds: not a readable dataset"),
    ]:
        with pytest.raises(ConfigurationError, match=needle):
            load_calibration(tmp_path / name)


def test_bad_calibration_specs(tmp_path: Path) -> None:
    for spec, needle in [
        ("synthetic:0", ">= 1"),
        (str(tmp_path / "missing.jsonl"), "no such"),
        (str(tmp_path), "not a saved"),
    ]:
        with pytest.raises(ConfigurationError, match=needle):
            load_calibration(spec)
    (tmp_path / "x.csv").write_text("label\n1\n")
    with pytest.raises(ConfigurationError, match="jsonl"):
        load_calibration(tmp_path / "x.csv")


def test_saved_hf_dataset(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"label": [0, 1, 2, 3]}).save_to_disk(str(tmp_path / "ds"))
    assert load_calibration(tmp_path / "ds").labels == [0, 1, 2, 3]


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 6)),
        elements=st.floats(-1e4, 1e4, width=32),
    )
)
def test_collector_matches_numpy(x: np.ndarray) -> None:
    n, c, inner = x.shape
    col = _core.ActivationCollector.make(c)
    col.add(7, np.ascontiguousarray(x).reshape(-1), n, c, inner)
    (s,) = col.stats()
    assert s["timestep"] == 7 and s["count"] == x.size and int(s["histogram"].sum()) == x.size
    np.testing.assert_array_equal(s["min"], x.min(axis=(0, 2)))
    np.testing.assert_array_equal(s["max"], x.max(axis=(0, 2)))
    np.testing.assert_array_equal(s["absmax"], np.abs(x).max(axis=(0, 2)))


def test_collector_rejects_non_finite() -> None:
    col = _core.ActivationCollector.make(2)
    with pytest.raises(aq.ArrowQuantError, match="finite"):
        col.add(0, np.array([1.0, np.inf], np.float32), 1, 2, 1)


def test_fake_quant_and_group_choice() -> None:
    x = torch.tensor([-1.0, 0.0, 0.26, 5.0])
    np.testing.assert_allclose(fake_quant(x, 0.25, 4, 4), [-1.0, 0.0, 0.25, 2.75])
    ta = {
        "num_groups": 3,
        "group_bounds": [0, 300, 700, 1000],
        "act_bits": 8,
        "act_scales": [0.1, 0.2, 0.3],
        "act_zero_points": [0, 0, 0],
    }
    from arrowquant.torch import TimestepState

    a = ActQuant(-1, None, ta, TimestepState())
    assert [a.group(t) for t in (0, 299, 300, 699, 700, 999, 5000)] == [0, 0, 1, 1, 2, 2, 2]
    with pytest.raises(RuntimeError, match="timestep"):
        a(torch.ones(2))


def _cfg(tmp: Path, **kw: object) -> aq.DiffusionQuantConfig:
    base = {
        "calibration": "synthetic:8",
        "calibration_steps": 5,
        "calibration_cache": str(tmp / "cache"),
        "time_groups": 2,
        "allocate": False,  # the widths equalization was chosen for (allocation: test_gptq.py)
    }
    return aq.DiffusionQuantConfig.from_profile("cloud", **(base | kw))  # type: ignore[arg-type]


def test_second_run_uses_the_cache(tmp_path: Path) -> None:
    plans1, s1 = calibrate(DIT, _cfg(tmp_path))
    plans2, s2 = calibrate(DIT, _cfg(tmp_path))
    assert s1["cache"] == "miss" and s2["cache"] == "hit"
    assert plans1 == plans2
    assert len(s1["timesteps"]) == 5 and s1["layers"] == len(plans1) > 10
    _, s3 = calibrate(DIT, _cfg(tmp_path, calibration_steps=4))  # other settings: a new entry
    assert s3["cache"] == "miss"


def test_conditioning_errors(tmp_path: Path) -> None:
    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt": "a seven"}\n')
    with pytest.raises(UnsupportedError, match="text prompts"):
        calibrate(DIT, _cfg(tmp_path, calibration=str(f)))
    f.write_text('{"label": 12}\n')
    with pytest.raises(UnsupportedError, match="10 classes"):
        calibrate(DIT, _cfg(tmp_path, calibration=str(f)))


@pytest.fixture(scope="module")
def dit_w8a8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("w8a8")
    out = tmp / "out"
    # A non-default format and a per-layer override: equalization must be searched with the
    # format each layer is written in (issue 13, bug 7).
    cfg = _cfg(tmp, equalize=True, group_size=64, overrides=[r"attn1\.to_q=4"])
    aq.ArrowQuantV2().quantize_diffusion_model(DIT, out, cfg)
    return out


def test_equalization_searched_with_each_layers_format_and_alpha_stored(dit_w8a8: Path) -> None:
    rep = json.loads((dit_w8a8 / "report.json").read_text())
    chosen = rep["summary"]["calibration"]["equalization_choices"]
    m = aq.open(dit_w8a8)
    stored = {n: m.info(n)["spatial"] for n in m.names() if m.info(n)["spatial"]}
    assert stored
    for name, sp in stored.items():
        assert chosen[name] is not None
        assert sp["smoothing_alpha"] == pytest.approx(chosen[name])  # was always 0.0
    formats = rep["summary"]["calibration"]["equalization_formats"]
    planned = {r["name"]: r for r in rep["layers"]}
    q_layers = [n for n in formats if "attn1.to_q" in n]
    assert q_layers and all(formats[n].startswith("int4-asym-g64-") for n in q_layers)
    assert any(f.startswith("int8-asym-g64-") for f in formats.values())
    for name, fmt in formats.items():
        if planned[name]["action"] == "quantized" and not planned[name]["fallbacks"]:
            assert planned[name]["format"] == fmt


def test_file_carries_time_groups_and_equalization(dit_w8a8: Path) -> None:
    m = aq.open(dit_w8a8 / "model.aq.parquet")
    infos = [m.info(n) for n in m.names()]
    with_ta = [i for i in infos if i["time_aware"]]
    assert len(with_ta) > 10
    ta = with_ta[0]["time_aware"]
    assert ta["num_groups"] == 2 and ta["group_bounds"][0] == 0 and ta["group_bounds"][-1] == 1000
    assert all(s > 0 for s in ta["act_scales"])
    assert any(i["spatial"] and len(i["spatial"]["equalization_scales"]) for i in infos)
    rep = json.loads((dit_w8a8 / "report.json").read_text())
    assert rep["summary"]["calibration"]["equalize"] is True
    assert "- calibration: synthetic:8" in (dit_w8a8 / "report.md").read_text()
    assert "calibration" in m.metadata["arrowquant.recipe"]


def test_doc_decoder_reproduces_equalized_tensors(dit_w8a8: Path) -> None:
    from format_decoder import decode

    f = aq.model.resolve_model_path(dit_w8a8)
    ours = decode(str(f))
    m = aq.open(f)
    eq = [n for n in m.names() if (m.info(n)["spatial"] or {}).get("equalization_scales")]
    assert eq
    for name in m.names():
        assert ours[name].tobytes() == m.load([name], np.float32)[0].tobytes(), name


def test_equalized_weights_load_back_as_w(dit_w8a8: Path) -> None:
    ref = load_reference(DIT)
    orig = {f"transformer/{k}": v for k, v in ref.module.state_dict().items()}
    loaded = aq.load_state_dict(dit_w8a8 / "model.aq.parquet", dtype=torch.float32)
    m = aq.open(dit_w8a8 / "model.aq.parquet")
    eq = [n for n in m.names() if (m.info(n)["spatial"] or {}).get("equalization_scales")]
    assert eq
    for n in eq:
        w = orig[n].float()
        rel = float((loaded[n] - w).norm() / w.norm())
        assert rel < 0.02, (n, rel)  # W, not W / s


def test_apply_runs_w8a8_in_diffusers(dit_w8a8: Path) -> None:
    ref = load_reference(DIT)
    noise, labels = initial_noise(ref, 16, seed=3)
    fp = sample(ref, ref.module, noise, labels, 10).samples
    model = load_reference(DIT).module
    rep = apply(model, dit_w8a8)
    assert rep.act_quantized and rep.equalized
    q = sample(ref, model, noise, labels, 10).samples
    rel = float((q - fp).norm() / fp.norm())
    rep.set_act_quant(model, False)
    w_only = sample(ref, model, noise, labels, 10).samples
    rel_w = float((w_only - fp).norm() / fp.norm())
    assert 0 < rel < 0.15 and rel_w < rel  # activation rounding adds error, and not much
    with timestep(rep, 999):
        assert rep.state.current == 999
    assert rep.state.current != 999


def test_cli_calibration_errors(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_text("{oops\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "arrowquant",
            "quantize",
            str(DIT),
            str(tmp_path / "o"),
            "--calibration",
            str(f),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("arrowquant: error:") and "bad.jsonl:1" in last
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "text",
    [
        "profile: local\non: x\n",  # a boolean key (fuzzer finding)
        "1: 2\nbits: 4\n",
        "max_rel_rmse: abc\n",
        "bits: true\n",
        "overrides: [1, 2]\n",
        'profile: ["a", "b"]\n',  # unhashable profile (fuzzer finding)
        "profile: {a: 1}\n",
        "created: 2001-13-45\n",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n",
    ],
)
def test_config_yaml_rejects_bad_types_cleanly(text: str) -> None:
    with pytest.raises(ConfigurationError):
        aq.DiffusionQuantConfig.from_yaml(text)


def test_equalization_search_helps_where_activations_have_outlier_channels() -> None:
    from types import SimpleNamespace

    from arrowquant.calibration.spatial import choose_equalization

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    ref = SimpleNamespace(module=torch.nn.Sequential(lin), component="")
    x = torch.randn(512, 64)
    x[:, 3] *= 100.0  # one outlier channel
    col = _core.ActivationCollector.make(64)
    col.add(0, x.numpy().reshape(-1), 512, 64, 1)
    specs = {"0.weight": _core.recommended_spec(8)}
    scales, choices = choose_equalization(ref, {"0.weight": col}, {"0.weight": x}, specs, 4)
    c = choices["0.weight"]
    assert c["alpha"] is not None and "0.weight" in scales
    assert c["errors"][str(c["alpha"])] < 0.9 * c["errors"]["none"]
    # The outlier channel is scaled down (X * s with s < 1), the weights' column up.
    assert scales["0.weight"][3] < 0.2 * np.median(scales["0.weight"])


def test_scale_input_channels_is_the_core_equalization() -> None:
    """calibration/spatial.py equalizes weights through the core's one ScaleInputChannels."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
    s = np.array([0.5, 2.0, 4.0], np.float32)
    ws = _core.scale_input_channels(w, s, True, "conv.weight")
    np.testing.assert_allclose(ws, w / s[None, :, None, None], rtol=1e-6)
    back = _core.scale_input_channels(ws, s, False, "conv.weight")
    np.testing.assert_allclose(back, w, rtol=1e-6)
    with pytest.raises(ValueError, match="conv.weight"):
        _core.scale_input_channels(w, s[:2], True, "conv.weight")
