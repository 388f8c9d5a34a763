"""The evaluation harness: metrics that can fail, on the trained reference models."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import arrowquant as aq
from arrowquant.diffusion import load_reference, quantized_state
from arrowquant.eval import evaluate
from arrowquant.eval.classifier import DigitsClassifier
from arrowquant.eval.digits import load_digits_images
from arrowquant.eval.metrics import PSNR_CAP_DB, bootstrap_ci, frechet_distance, psnr, ssim

MODELS = Path(__file__).resolve().parents[2] / "models"
DDPM = MODELS / "digits-ddpm"
DIT = MODELS / "digits-dit"
FAST = {"samples": 32, "steps": 10, "bootstrap_rounds": 50}


def test_psnr_and_ssim_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (3, 1, 16, 16))
    assert np.all(psnr(a, a) == PSNR_CAP_DB)
    assert np.allclose(ssim(a, a), 1.0)
    # A constant offset of 0.2 in [-1, 1] is 0.1 in [0, 1]: MSE 0.01, 20 dB.
    b = np.clip(a, -0.8, 0.8)
    assert np.allclose(psnr(b, b + 0.2), 20.0)
    assert np.all(ssim(a, -a) < 0.1)


def test_frechet_distance_and_bootstrap() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 4))
    y = rng.normal(size=(4000, 4))
    assert frechet_distance(x, y) < 0.05
    assert frechet_distance(x, y + 3.0) == pytest.approx(36.0, rel=0.05)  # ||3·1||^2 over 4 dims
    assert frechet_distance(x, 2.0 * y) == pytest.approx(4.0, rel=0.1)  # 4·(2-1)^2
    v = rng.normal(5.0, 1.0, 400)
    lo, hi = bootstrap_ci(len(v), lambda i: float(v[i].mean()), rounds=300)
    assert lo < v.mean() < hi and hi - lo < 0.5


def test_classifier_recognises_real_digits() -> None:
    images, labels = load_digits_images()
    pred = DigitsClassifier.load().predict(images.numpy())
    assert (pred == labels.numpy()).mean() > 0.95


@pytest.fixture(scope="module")
def ddpm_cloud(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "cloud"
    aq.ArrowQuantV2().quantize_diffusion_model(
        DDPM, out, aq.DiffusionQuantConfig.from_profile("cloud", calibration="")
    )
    return out


def test_reference_models_are_committed() -> None:
    for folder, component in ((DDPM, "unet"), (DIT, "transformer")):
        weights = folder / component / "diffusion_pytorch_model.safetensors"
        assert weights.is_file() and weights.stat().st_size <= 20 * 2**20
        assert (folder / "training.json").is_file()


def _break(state: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    broken = dict(state)
    name = "up_blocks.2.resnets.1.conv2.weight"  # last resnet: feeds the output, no norm after
    broken[name] = -state[name] if how == "sign" else 2.0 * state[name]
    return broken


@pytest.mark.parametrize("how", ["sign", "scale x2"])
def test_planted_fault_is_reported_as_a_large_error(ddpm_cloud: Path, how: str) -> None:
    ref = load_reference(DDPM)
    good = quantized_state(ref, ddpm_cloud)
    doc = evaluate(DDPM, {"cloud": good, "broken": _break(good, how)}, **FAST)
    cloud, broken = doc["settings"]
    assert cloud["psnr"]["mean"] >= 30.0
    assert broken["psnr"]["mean"] < cloud["psnr"]["mean"] - 10.0
    assert broken["drift"]["one_step_mean"] > 10 * cloud["drift"]["one_step_mean"]
    assert broken["fd_fp"] > 10 * cloud["fd_fp"]


def test_dit_eval_reports_accuracy_and_writes_outputs(tmp_path: Path) -> None:
    ref = load_reference(DIT)
    assert ref.kind == "dit" and ref.num_classes == 10
    state = {k: v.clone() for k, v in ref.module.state_dict().items()}
    doc = evaluate(DIT, {"same weights": state}, out_dir=tmp_path, **FAST)
    s = doc["settings"][0]
    assert s["psnr"]["mean"] == PSNR_CAP_DB and s["drift"]["trajectory_mean"] == 0.0
    assert s["accuracy"]["mean"] == doc["reference"]["accuracy"]["mean"]
    assert doc["reference"]["accuracy"]["mean"] > 0.5  # the FP DiT draws the requested digits
    for f in ("eval.json", "eval.md", "grid.png"):
        assert (tmp_path / f).stat().st_size > 0


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "arrowquant", "eval", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_eval_bad_input(
    tmp_path: Path, ddpm_cloud: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from arrowquant import cli

    cases = [
        (str(tmp_path / "missing"), str(ddpm_cloud)),  # no model
        (str(DIT), str(ddpm_cloud)),  # quantized from another model
        (str(DDPM), str(tmp_path)),  # no model file
        (str(DDPM), str(ddpm_cloud), "--samples", "1"),
    ]
    for args in cases:  # in-process (an exception would fail the test); one through the binary
        assert cli.main(["eval", *args]) == 2, args
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("arrowquant: error:"), last
    r = _cli(*cases[0])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("arrowquant: error:")


def test_cli_eval_table(tmp_path: Path, ddpm_cloud: Path) -> None:
    r = _cli(
        str(DDPM), f"int8={ddpm_cloud}", "--samples", "16", "--steps", "5", "--out", str(tmp_path)
    )
    assert r.returncode == 0, r.stderr
    assert "| int8 |" in r.stdout and (tmp_path / "grid.png").is_file()
