"""GPTQ in the product: second moments captured while the FP model samples (cached with the
calibration), calibrated layers quantized on them and validated on their held-out output error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import arrowquant as aq
import arrowquant._core as _core
from arrowquant.calibration import cache, calibrate
from arrowquant.checkpoint import load_checkpoint

MODELS = Path(__file__).resolve().parents[2] / "models"
DIT = MODELS / "digits-dit"
DDPM = MODELS / "digits-ddpm"


def _cfg(tmp: Path, **kw: object) -> aq.DiffusionQuantConfig:
    base = {
        "calibration": "synthetic:4",
        "calibration_steps": 4,
        "calibration_cache": str(tmp / "cache"),
        "time_groups": 2,
    }
    profile = str(kw.pop("profile", "local"))
    return aq.DiffusionQuantConfig.from_profile(profile, **(base | kw))  # type: ignore[arg-type]


def test_second_moments_binding_and_cache_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 300)).astype(np.float32)
    h = _core.SecondMoments.make(300)
    h.add(x, 2)
    # Packed upper triangle, row by row: row i holds columns i..299.
    packed = h.data()
    assert packed.size == 300 * 301 // 2
    rows, cols = np.triu_indices(300)
    np.testing.assert_allclose(packed, (x.T.astype(np.float64) @ x)[rows, cols], atol=1e-4)
    blocked = _core.SecondMoments.make(600, 512)
    assert blocked.block == 512 and blocked.data().size == 512 * 513 // 2 + 88 * 89 // 2
    with pytest.raises(ValueError, match="multiple of 128"):
        _core.SecondMoments.make(300, 100)
    cache.save_moments(tmp_path / "m.npz", {"a.weight": (h, h)})
    back = cache.load_moments(tmp_path / "m.npz")
    assert back is not None and back["a.weight"][0].count == 100
    np.testing.assert_array_equal(back["a.weight"][1].data(), h.data())


def test_calibration_collects_moments_per_layer_and_caches_them(tmp_path: Path) -> None:
    m1: dict = {}
    _, s1 = calibrate(DDPM, _cfg(tmp_path), moments=m1)
    m2: dict = {}
    _, s2 = calibrate(DDPM, _cfg(tmp_path), moments=m2)
    assert s1["cache"] == "miss" and s2["cache"] == "hit"
    assert sorted(m1) == sorted(m2) and len(m1) > 30
    for name, (fit, check) in m1.items():
        assert fit.count > 0 and check.count > 0, name
        np.testing.assert_array_equal(fit.data(), m2[name][0].data())
    # A 3x3 conv's H is over its unfolded patches: in_channels * 9 columns.
    conv = next(n for n in m1 if "down_blocks.0.resnets.0.conv1" in n)
    shape = load_checkpoint(DDPM).info(conv).shape
    assert shape[2:] == (3, 3) and m1[conv][0].dim == shape[1] * 9
    assert s1["second_moments"]["layers"] == len(m1)


@pytest.mark.parametrize("model", [DDPM], ids=["ddpm"])  # convs and linears
def test_gptq_lowers_the_layers_output_error(model: Path, tmp_path: Path) -> None:
    api = aq.ArrowQuantV2()
    g = api.quantize_diffusion_model(model, tmp_path / "g", _cfg(tmp_path, profile="edge"))
    # Round to nearest in GPTQ's format at this profile (groups of 64: api._calibrated_format).
    r = api.quantize_diffusion_model(
        model, tmp_path / "r", _cfg(tmp_path, profile="edge", gptq=False, group_size=64)
    )
    lg = {x["name"]: x for x in g.layers if x["action"] == "quantized"}
    lr = {x["name"]: x for x in r.layers if x["action"] == "quantized"}
    gptq = [n for n, x in lg.items() if x["method"] == "gptq"]
    assert len(gptq) > 10
    assert all(lg[n]["validation"] == "output" and lg[n]["output_error"] > 0 for n in gptq)
    assert all(x["method"] == "rtn" and x["validation"] == "weight" for x in lr.values())
    # Same bytes on disk per layer; lower output error on held-out rows for most layers.
    moments: dict = {}
    calibrate(model, _cfg(tmp_path, profile="edge"), moments=moments)
    # (The allocator widens some GPTQ layers: those are not compared.)
    same = [n for n in gptq if lr[n]["bits"] == lg[n]["bits"]]
    assert len(same) > 10
    wins = 0
    for n in same:
        assert lr[n]["stored_bytes"] == lg[n]["stored_bytes"]
        wins += lg[n]["output_error"] < _rtn_output_error(tmp_path / "r", model, n, moments)
    assert wins >= 0.8 * len(same)
    # The whole-model check: one-step prediction error on fresh FP trajectories, lower with GPTQ.
    cg, cr = g.extra["calibration"]["one_step_check"], r.extra["calibration"]["one_step_check"]
    assert cg["groups"] and len(cg["per_timestep"]) >= 4
    assert 0 < cg["mean"] < cr["mean"]
    assert "whole-model check" in (tmp_path / "g" / "report.md").read_text()
    doc = json.loads((tmp_path / "g" / "report.json").read_text())
    assert doc["summary"]["calibration"]["second_moments"]["layers"] >= len(gptq)


def _rtn_output_error(out: Path, model: Path, name: str, moments: dict) -> float:
    """The held-out relative output error of the round-to-nearest file's layer."""
    q = aq.open(out).tensor(name)
    ck = load_checkpoint(model)
    w = np.ascontiguousarray(ck.numpy(name), dtype=np.float32)
    check = moments[name][1]
    e = (w - q.dequantize(np.float32)).reshape(w.shape[0], -1).astype(np.float64)
    wf = w.reshape(w.shape[0], -1).astype(np.float64)
    assert check.block >= check.dim  # the reference layers are small enough for a full H
    h = np.zeros((check.dim, check.dim))
    h[np.triu_indices(check.dim)] = check.data()  # the packed upper triangle
    h = h + np.triu(h, 1).T
    return float(np.sqrt(np.einsum("ri,ij,rj->", e, h, e) / np.einsum("ri,ij,rj->", wf, h, wf)))


def test_calibration_by_default_for_models_the_tool_can_sample(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from arrowquant.api import resolve_calibration

    cfg = aq.DiffusionQuantConfig()
    assert cfg.calibration == "auto"
    got, path = resolve_calibration(DIT, cfg)
    assert got.calibration == "synthetic" and path["path"] == "calibrated"
    assert "DiTTransformer2DModel" in path["why"]
    unet_file = next((DDPM / "unet").glob("*.safetensors"))
    got, path = resolve_calibration(unet_file, cfg)
    assert got.calibration == "" and path["path"] == "weight-only" and "file" in path["why"]
    got, path = resolve_calibration(DIT, aq.DiffusionQuantConfig(calibration=""))
    assert path == {"path": "weight-only", "why": "calibration off"}

    from arrowquant.cli import main

    common = ["--calibration-samples", "4", "--calibration-steps", "3", "--time-groups", "2"]
    (tmp_path / "c.yaml").write_text(f"calibration_cache: {tmp_path / 'cache'}\n")
    env_cache = ["--config", str(tmp_path / "c.yaml")]
    assert main(["quantize", str(DIT), str(tmp_path / "auto"), *common, *env_cache]) == 0
    assert "calibrating on the model's own samples (4 x 3" in capsys.readouterr().err
    doc = json.loads((tmp_path / "auto" / "report.json").read_text())["summary"]
    assert doc["path"]["path"] == "calibrated"
    assert "by measured sensitivity" in doc["budget"]
    assert doc["calibration"]["sensitivity"]["layers"] > 10
    recipe = aq.open(tmp_path / "auto").metadata["arrowquant.recipe"]
    assert recipe["path"]["path"] == "calibrated"
    assert main(["quantize", str(DIT), str(tmp_path / "off"), "--no-calibration"]) == 0
    assert "calibrating" not in capsys.readouterr().err
    off = json.loads((tmp_path / "off" / "report.json").read_text())["summary"]
    assert off["path"]["path"] == "weight-only" and "calibration" not in off
    assert "path: weight-only" in (tmp_path / "off" / "report.md").read_text()


def test_second_moments_stay_within_their_memory_cap(tmp_path: Path) -> None:
    from arrowquant.calibration.capture import _h_bytes, moment_plan

    dims = {"a": 128, "b": 1280, "c": 11520, "d": 23040}

    def total(plan: dict[str, tuple[int, int]]) -> int:
        return sum(_h_bytes(dims[n], f) + _h_bytes(dims[n], c) for n, (f, c) in plan.items())

    roomy = moment_plan(dims, 1e12)
    assert roomy == {"a": (0, 0), "b": (0, 0), "c": (1024, 1024), "d": (1024, 1024)}
    for cap in (2.5e8, 1e8, 3e7, 5e5):
        plan = moment_plan(dims, cap)
        assert total(plan) <= cap, cap
        assert all(c in (0, 128) and f in (0, 256, 512, 1024) for f, c in plan.values())
    assert moment_plan(dims, 2.5e8)["d"] == (1024, 128)  # held-out H shrinks first
    tight = moment_plan(dims, 3e7)
    assert "d" not in tight and "a" in tight  # then the widest layers go without
    # In a run: every layer's H within the cap; layers left out are rounded to nearest.
    import torch
    from torch import nn

    net = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.Linear(512, 64))

    def run(m: nn.Module) -> None:
        for t in (800, 200):
            with aq.torch.timestep(t):
                m(torch.randn(64, 64))

    # Room for one 512-wide layer at blocks of 256 (fit and held-out: 2 x 2 packed triangles of
    # 256 columns, 8 bytes each), not for two.
    cap_gb = 1.2 * 4 * 256 * 257 / 2 * 8 / 2**30
    r = aq.quantize_module(net, tmp_path / "q", calibrate=run, moments_memory_gb=cap_gb)
    sm = r.extra["calibration"]["second_moments"]
    assert sm["memory_mib"] * 2**20 <= cap_gb * 2**30
    methods = {x["name"]: x["method"] for x in r.layers if x["action"] == "quantized"}
    assert "rtn" in methods.values() and "gptq" in methods.values()


def test_default_moments_cap_follows_the_model_size() -> None:
    from torch import nn

    from arrowquant.calibration.capture import (
        MOMENTS_CAP,
        MOMENTS_CAP_MIN,
        MOMENTS_CAP_SHARE,
        moments_cap_bytes,
    )

    def linear(params_m: int) -> nn.Module:  # meta device: nothing is allocated
        return nn.Linear(1000, params_m * 1000, bias=False, device="meta")

    assert moments_cap_bytes(linear(1), 0.25) == 0.25 * 2**30  # given: obeyed
    assert moments_cap_bytes(linear(1), 0) == MOMENTS_CAP_MIN  # small models: the floor
    # SD1.5's UNet in f32 (860 M parameters, 3.4 GB): 35% of it.
    assert moments_cap_bytes(linear(860), 0) == pytest.approx(MOMENTS_CAP_SHARE * 860e6 * 4)
    assert moments_cap_bytes(linear(5000), 0) == MOMENTS_CAP  # at most 2 GiB
    half = nn.Linear(1000, 860_000, bias=False, device="meta", dtype=torch.float16)
    assert moments_cap_bytes(half, 0) == pytest.approx(MOMENTS_CAP_SHARE * 860e6 * 2)


def test_spilled_moments_come_back_unchanged() -> None:
    from arrowquant.module import _spilled

    rng = np.random.default_rng(1)
    moments: dict[str, tuple[Any, Any]] = {}
    for name, dim, block in (("a", 300, 0), ("b", 600, 256)):
        fit, check = _core.SecondMoments.make(dim, block), _core.SecondMoments.make(dim, block)
        fit.add(rng.normal(size=(40, dim)).astype(np.float32), 1)
        check.add(rng.normal(size=(9, dim)).astype(np.float32), 1)
        moments[name] = (fit, check)
    before = {k: [(h.dim, h.block, h.count, h.data()) for h in v] for k, v in moments.items()}
    with _spilled(moments, enabled=True):
        assert moments == {}  # out of memory while the block runs
    assert list(moments) == ["a", "b"]
    for k, pair in moments.items():
        for h, (dim, block, count, data) in zip(pair, before[k], strict=True):
            assert (h.dim, h.block, h.count) == (dim, block, count)
            np.testing.assert_array_equal(h.data(), data)


def test_auto_calibration_on_a_folder_it_cannot_sample(tmp_path: Path) -> None:
    import shutil

    from arrowquant.errors import MalformedModelError, UnsupportedError

    folder = tmp_path / "m"
    folder.mkdir()
    weights = DIT / "transformer" / "diffusion_pytorch_model.safetensors"
    shutil.copy(weights, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text('{"_class_name": "UNet2DModel", "sample_size": "x"}')
    api = aq.ArrowQuantV2()
    r = api.quantize_diffusion_model(folder, tmp_path / "o", aq.DiffusionQuantConfig())
    assert r.extra["path"]["path"] == "weight-only"
    assert "cannot sample" in r.extra["path"]["why"] and "UNet2DModel" in r.extra["path"]["why"]
    with pytest.raises(UnsupportedError, match="diffusers cannot load"):  # asked for: an error
        api.quantize_diffusion_model(
            folder, tmp_path / "o2", aq.DiffusionQuantConfig(calibration="synthetic:2")
        )
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10" * 64)
    with pytest.raises(MalformedModelError):  # the reader's error, before diffusers sees it
        api.quantize_diffusion_model(folder, tmp_path / "o3", aq.DiffusionQuantConfig())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "o"]  # nothing half-written


def test_sensitivity_is_cached_with_the_calibration(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    got = []
    for _ in range(2):
        moments: dict = {}
        sens: dict = {}
        _, summary = calibrate(DIT, cfg, moments=moments, sensitivity=sens)
        got.append((summary["sensitivity"], sens))
    (first, v1), (second, v2) = got
    assert first["cache"] == "miss" and second["cache"] == "hit"
    assert first["layers"] == len(v1) > 10 and v1.keys() == v2.keys()
    for k in v1:  # per output row, one gain per layer, positive
        assert v1[k].shape == v2[k].shape and (v1[k] > 0).all()
        np.testing.assert_array_equal(v1[k], v2[k])


@pytest.mark.parametrize(
    "conv",
    [
        dict(kernel_size=3, padding=1),
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=(3, 2), stride=(2, 1), padding=(0, 1), dilation=(1, 2)),
        dict(kernel_size=1),
    ],
)
def test_picked_rows_are_the_unfolded_rows(conv: dict[str, Any]) -> None:
    # H gets a random subset of each call's rows: gathered directly, the same rows (values and
    # order) as unfolding the whole input and indexing it.
    import torch
    from torch import nn

    from arrowquant.calibration.capture import layer_rows, picked_rows, row_count

    m = nn.Conv2d(5, 7, **conv)
    x = torch.randn(3, 5, 9, 8)
    full = layer_rows(m, x)
    assert full is not None and full.shape[0] == row_count(m, x)
    pick = torch.randperm(full.shape[0], generator=torch.Generator().manual_seed(0))[:40]
    assert torch.equal(picked_rows(m, x, pick), full[pick])
    lin, xl = nn.Linear(5, 4), torch.randn(2, 3, 5)
    assert row_count(lin, xl) == 6
    assert torch.equal(picked_rows(lin, xl, pick[:3] % 6), xl.reshape(-1, 5)[pick[:3] % 6])


def test_big_models_draw_fewer_rows_into_h() -> None:
    from types import SimpleNamespace

    from torch import nn

    from arrowquant.calibration.capture import (
        BIG_MODEL_MOMENT_ROWS,
        CHECK_ROWS,
        MOMENT_ROWS,
        Recorder,
    )

    state = SimpleNamespace(current=None)
    big = nn.Linear(12_000, 10_000, device="meta")  # 120 M parameters, nothing allocated
    small = nn.Linear(64, 64)
    for module, rows in ((big, BIG_MODEL_MOMENT_ROWS), (small, MOMENT_ROWS)):
        rec = Recorder(module, lambda n: n, state, moments={})
        assert rec.moment_rows == rows
        rec.remove()
    # In a run: each call adds that many rows (and the held-out fifth) to a layer's H.
    moments: dict[str, tuple[Any, Any]] = {}
    rec = Recorder(small, lambda n: n, state, moments=moments)
    rec.moment_rows = 40
    with torch.no_grad():
        small(torch.randn(500, 64))
    rec.remove()
    fit, check = moments[""]
    assert fit.count + check.count == 40 + CHECK_ROWS and check.count == 20
