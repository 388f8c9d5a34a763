"""Text/code diffusion: the masked diffusion LM trained here (models/code-mdlm), its modality,
calibration grouped by mask ratio, and evaluation by masked-token NLL and paired generation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import arrowquant as aq
from arrowquant.calibration.masked import ratios
from arrowquant.errors import ShapeMismatchError, UnsupportedError
from arrowquant.eval import evaluate
from arrowquant.masked_diffusion import (
    generate,
    is_masked_lm,
    load_masked_lm,
    masked,
    masked_nll,
    quantized_module,
    timestep_of,
    windows,
)

MODELS = Path(__file__).resolve().parents[2] / "models"
MDLM = MODELS / "code-mdlm"
QUICK = {"calibration_samples": 16, "calibration_steps": 8}


@pytest.fixture(scope="module")
def ref():  # type: ignore[no-untyped-def]
    return load_masked_lm(MDLM)


@pytest.fixture(scope="module")
def local_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mdlm") / "local"
    cfg = aq.DiffusionQuantConfig.resolve(profile="local", **QUICK)
    aq.ArrowQuantV2().quantize_diffusion_model(MDLM, out, cfg)
    return out


def test_model_loads_with_stock_classes_and_predicts_code(ref) -> None:  # type: ignore[no-untyped-def]
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    assert is_masked_lm(MDLM) and not is_masked_lm(MODELS / "digits-ddpm")
    AutoModelForMaskedLM.from_pretrained(MDLM, local_files_only=True)
    AutoTokenizer.from_pretrained(MDLM, local_files_only=True)
    x = windows(ref, ref.texts())
    assert x.shape[1] == ref.length and x.shape[0] >= 32
    # It uses the context: at 15% masked a nat and more below all-masked (no context, what a
    # model stuck at the unigram plateau would give at every ratio) and below log(vocab).
    nll = masked_nll(ref, ref.module, x[:16], 0.15, seed=0)
    assert nll < masked_nll(ref, ref.module, x[:16], 1.0, seed=0) - 1.0
    assert nll < np.log(len(ref.tokenizer)) - 2.0
    # More masking, less context, higher NLL: the mask ratio behaves like a timestep.
    assert masked_nll(ref, ref.module, x[:16], 0.85, seed=0) > nll


def test_masking_and_generation_are_paired(ref) -> None:  # type: ignore[no-untyped-def]
    x = windows(ref, ref.texts())[:4]
    a, ma = masked(ref, x, 0.5, seed=3)
    b, mb = masked(ref, x, 0.5, seed=3)
    assert torch.equal(a, b) and torch.equal(ma, mb) and 0.3 < ma.double().mean() < 0.7
    g1 = generate(ref, ref.module, 2, 8, seed=1)
    g2 = generate(ref, ref.module, 2, 8, seed=1)
    assert torch.equal(g1, g2) and not (g1 == ref.mask_id).any()
    assert timestep_of(1.0) == 999 and timestep_of(0.0) == 0
    assert ratios(4) == [0.25, 0.5, 0.75, 1.0]


def test_modality_is_code_and_calibration_groups_by_mask_ratio(local_out: Path) -> None:
    report = json.loads((local_out / "report.json").read_text())
    assert report["modality"] == "code"
    s = report["summary"]
    assert s["path"]["path"] == "calibrated" and "mask ratio" in s["path"]["why"]
    cal = s["calibration"]
    assert "mask ratios" in cal["sampler"]
    # Recorded at the timesteps of the 8 ratios (the groups come from those).
    assert cal["timesteps"] == sorted(timestep_of(r) for r in ratios(8))
    assert cal["second_moments"]["layers"] > 0
    layers = {x["name"]: x for x in report["layers"]}
    quantized = [x for x in layers.values() if x["action"] == "quantized"]
    assert len(quantized) >= 16 and all(x["method"] == "gptq" for x in quantized)
    # The tied decoder is stored once, as the (kept) word embeddings.
    assert "decoder.weight" not in layers
    assert layers["model.embeddings.tok_embeddings.weight"]["action"] == "kept"
    model = aq.open(local_out)
    grouped = [
        model.info(n)["time_aware"]
        for n in model.names()
        if (model.info(n) or {}).get("time_aware")
    ]
    assert grouped and max(t["num_groups"] for t in grouped) > 1
    check = cal["nll_check"]["masked_nll"]
    assert all(abs(v["relative"]) < 0.2 for v in check.values())


def test_eval_reports_nll_by_ratio_and_agreement(local_out: Path, tmp_path: Path) -> None:
    doc = evaluate(MDLM, {"local": local_out}, samples=16, steps=8, out_dir=tmp_path / "ev")
    assert set(doc["reference"]["masked_nll"]) == {"0.15", "0.5", "0.85"}
    s = doc["settings"][0]
    for v in s["masked_nll"].values():
        lo, hi = v["relative_ci95"]
        assert lo <= v["relative"] <= hi and abs(v["relative"]) < 0.2
    assert 0.5 < s["generation_agreement"] <= 1.0
    assert (tmp_path / "ev" / "samples.json").is_file()
    assert "generation agreement" in (tmp_path / "ev" / "eval.md").read_text()


def test_planted_fault_shows_in_nll(ref, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import copy

    broken = copy.deepcopy(ref.module)
    with torch.no_grad():
        broken.model.layers[1].mlp.Wi.weight.mul_(-1.0)
    doc = evaluate(MDLM, {"broken": broken}, samples=8, steps=4)
    assert doc["settings"][0]["masked_nll"]["0.15"]["relative"] > 0.05


def test_masked_lm_bad_input(tmp_path: Path) -> None:
    f = tmp_path / "labels.jsonl"
    f.write_text('{"label": 1}\n')
    with pytest.raises(UnsupportedError, match="masked language model"):
        aq.ArrowQuantV2().quantize_diffusion_model(
            MDLM, tmp_path / "o", aq.DiffusionQuantConfig.resolve(calibration=str(f), **QUICK)
        )
    assert not (tmp_path / "o").exists()
    other = tmp_path / "ddpm"
    aq.ArrowQuantV2().quantize_diffusion_model(
        MODELS / "digits-ddpm", other, aq.DiffusionQuantConfig.resolve(calibration="")
    )
    with pytest.raises(ShapeMismatchError, match="was it quantized from this model"):
        quantized_module(load_masked_lm(MDLM), other)
