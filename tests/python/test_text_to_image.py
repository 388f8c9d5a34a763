"""Text-to-image pipelines: the reference pipeline trained here (models/digits-t2i), calibration
from prompts through its own text encoder, per-component settings, evaluation, and the whole
quantize -> load -> generate round trip through the stock diffusers classes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import arrowquant as aq
from arrowquant.calibration import time_invariant
from arrowquant.diffusion import load_reference, synthetic_prompts
from arrowquant.errors import ConfigurationError, UnsupportedError
from arrowquant.eval import evaluate
from arrowquant.eval.digits import requested_digit
from arrowquant.torch import apply_pipeline

MODELS = Path(__file__).resolve().parents[2] / "models"
T2I = MODELS / "digits-t2i"
PROMPTS = T2I / "prompts.jsonl"
QUICK = {"calibration_samples": 8, "calibration_steps": 6}


def _components(report: aq.QuantizationReport) -> dict[str, dict]:
    return report.summary()["components"]


def _quantize(out: Path, **config: object) -> aq.QuantizationReport:
    cfg = aq.DiffusionQuantConfig.resolve(**config)
    return aq.ArrowQuantV2().quantize_diffusion_model(T2I, out, cfg)


@pytest.fixture(scope="module")
def calib_prompts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Calibration prompts unlike the evaluation's (held out)."""
    path = tmp_path_factory.mktemp("prompts") / "calib.jsonl"
    texts = [f"a thin {n}" for n in ("zero", "three", "five", "seven", "nine")]
    texts += [f"number {d}" for d in (1, 2, 4, 6, 8)]
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return path


@pytest.fixture(scope="module")
def local_out(tmp_path_factory: pytest.TempPathFactory, calib_prompts: Path) -> Path:
    out = tmp_path_factory.mktemp("t2i") / "local"
    cfg = aq.DiffusionQuantConfig.resolve(
        profile="local",
        calibration=str(calib_prompts),
        calibration_cache=str(out.parent / "cache"),
        **QUICK,
    )
    aq.ArrowQuantV2().quantize_diffusion_model(T2I, out, cfg)
    return out


def test_pipeline_loads_offline_with_stock_classes_and_guidance_works() -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(T2I, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    out = pipe(["a handwritten seven"] * 2, num_inference_steps=8, output_type="np", generator=g)
    assert out.images.shape == (2, 16, 16, 1)
    # Guidance changes the image: the unconditional branch is not the conditional one.
    g = torch.Generator().manual_seed(0)
    plain = pipe(
        ["a handwritten seven"] * 2,
        num_inference_steps=8,
        guidance_scale=1.0,
        output_type="np",
        generator=g,
    )
    assert np.abs(out.images - plain.images).mean() > 1e-3


def test_synthetic_prompts_use_the_tokenizer_words() -> None:
    ref = load_reference(T2I)
    assert ref.kind == "t2i" and ref.text is not None
    words = set(ref.text.vocabulary())
    assert {"seven", "thin", "handwritten"} <= words
    assert not any(w.startswith("<|") for w in words)
    prompts = synthetic_prompts(ref, 20, seed=3)
    assert prompts == synthetic_prompts(ref, 20, seed=3)  # seeded
    assert all(2 <= len(p.split()) <= 6 and set(p.split()) <= words for p in prompts)


@pytest.mark.parametrize(
    ("prompt", "digit"),
    [("a thin seven", 7), ("the number 3", 3), ("a seven or a 3", None), ("a cat", None)],
)
def test_requested_digit(prompt: str, digit: int | None) -> None:
    assert requested_digit(prompt) == digit


def test_calibrated_pipeline_quantizes_every_component(local_out: Path) -> None:
    report = json.loads((local_out / "report.json").read_text())
    comps = report["summary"]["components"]
    assert set(comps) == {"text_encoder", "unet", "vae"}
    assert comps["unet"]["profile"] == "local" and comps["vae"]["profile"] == "cloud"
    assert comps["text_encoder"]["profile"] == "local"
    cal = report["summary"]["calibration"]
    assert cal["kind"] == "texts" and "classifier-free guidance" in cal["sampler"]
    # The text encoder and the VAE decoder were recorded too (one group: no t moves them), as
    # were the cross-attention K/V projections of the UNet, whose input is the text.
    assert cal["time_invariant_layers"] > 0
    # The whole-model check ran the stored UNet on the stored text encoder's embeddings.
    assert 0 < cal["one_step_check"]["mean"] < 0.2
    layers = {x["name"]: x for x in report["layers"]}
    te = [x for n, x in layers.items() if n.startswith("text_encoder/") and x["bits"]]
    assert te and all(x["method"] == "gptq" for x in te)
    dec = [x for n, x in layers.items() if n.startswith("vae/decoder.") and x["bits"]]
    assert dec and all(x["method"] == "gptq" for x in dec)
    # The VAE's own profile (cloud) chose its format: the 8-bit default, not the job's 4-bit
    # calibrated grid.
    assert all("minmax" not in x["format"] for x in dec if x["bits"] == 8)
    enc = [x for n, x in layers.items() if n.startswith("vae/encoder.") and x["bits"]]
    assert enc and all(x["method"] == "rtn" for x in enc)  # unused by text-to-image sampling
    # First and last convolutions of the VAE's encoder and decoder stay as they are.
    for name in ("vae/decoder.conv_in.weight", "vae/decoder.conv_out.weight"):
        assert layers[name]["action"] == "kept", name
    # Each component met its own size: the UNet at the local profile's <= 4.6 bits a weight.
    assert comps["unet"]["bits_per_weight"] <= 4.6
    assert comps["vae"]["bits_per_weight"] > comps["unet"]["bits_per_weight"]
    md = (local_out / "report.md").read_text()
    assert "## unet (local)" in md and "## vae (cloud)" in md and "| component |" in md


def test_cross_attention_kv_inputs_are_time_invariant(calib_prompts: Path) -> None:
    from arrowquant.calibration import load_calibration
    from arrowquant.calibration.capture import capture

    ref = load_reference(T2I)
    cols = capture(ref, load_calibration(str(calib_prompts)), steps=4, seed=0)
    kv = [n for n in cols if "attn2.to_k" in n or "attn2.to_v" in n]
    assert kv and all(time_invariant(cols[n]) for n in kv)
    q = [n for n in cols if "attn2.to_q" in n or "attn1.to_k" in n]
    assert q and not any(time_invariant(cols[n]) for n in q)
    assert any(n.startswith("text_encoder/") for n in cols)
    assert any(n.startswith("vae/decoder.") for n in cols)
    assert not any(n.startswith("vae/encoder.") for n in cols)


def test_component_profiles_choose_per_component(tmp_path: Path) -> None:
    out = tmp_path / "mixed"
    r = _quantize(
        out,
        calibration="",
        components=["unet=edge", "vae=keep", "text_encoder=cloud"],
    )
    comps = _components(r)
    assert comps["vae"]["profile"] == "keep"
    assert all(k.startswith("kept") for k in comps["vae"]["formats"])
    te_bits = {x["bits"] for x in r.layers if x["name"].startswith("text_encoder/") and x["bits"]}
    assert te_bits == {8}
    unet_bits = {x["bits"] for x in r.layers if x["name"].startswith("unet/") and x["bits"]}
    assert 2 in unet_bits and comps["unet"]["bits_per_weight"] < 4


def test_component_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="components"):
        aq.DiffusionQuantConfig.resolve(components=["vae=huge"])
    with pytest.raises(ConfigurationError, match="named twice"):
        aq.DiffusionQuantConfig.resolve(components=["vae=cloud", "vae=local"])
    with pytest.raises(ConfigurationError, match="transformer.*has text_encoder, unet, vae"):
        _quantize(tmp_path / "x", calibration="", components=["transformer=local"])
    assert not (tmp_path / "x").exists()
    cli = subprocess.run(
        [sys.executable, "-m", "arrowquant", "quantize", str(T2I), str(tmp_path / "y")]
        + ["--no-calibration", "--component", "unet=local,decoder=cloud"],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 2
    assert "decoder" in cli.stderr and "Traceback" not in cli.stderr
    assert len(cli.stderr.strip().splitlines()) == 1


def test_labels_cannot_calibrate_a_text_pipeline(tmp_path: Path) -> None:
    f = tmp_path / "labels.jsonl"
    f.write_text('{"label": 3}\n')
    with pytest.raises(UnsupportedError, match="text-to-image pipeline"):
        _quantize(tmp_path / "o", calibration=str(f), **QUICK)


def test_eval_reports_prompts_adherence_and_grids(local_out: Path, tmp_path: Path) -> None:
    prompts = [json.loads(x)["prompt"] for x in PROMPTS.read_text().splitlines()]
    doc = evaluate(
        T2I,
        {"local": local_out},
        samples=len(prompts),
        steps=10,
        bootstrap_rounds=50,
        out_dir=tmp_path / "ev",
        prompts=prompts,
    )
    ref = doc["reference"]
    assert ref["adherence"]["mean"] > 0.5  # the FP pipeline draws the digit asked for
    s = doc["settings"][0]
    assert {p["prompt"] for p in s["per_prompt"]} == set(prompts)
    assert all(0 <= p["adherence"] <= 1 for p in s["per_prompt"])
    assert s["psnr"]["mean"] > 20 and "adherence" in s and "fd_real" in s
    assert len(s["drift"]["one_step"]) > 0
    assert (tmp_path / "ev" / "grid-prompt-0.png").is_file()
    names = json.loads((tmp_path / "ev" / "prompts.json").read_text())
    assert len(names) == len(prompts)
    assert "Per prompt, local" in (tmp_path / "ev" / "eval.md").read_text()


def test_round_trip_generates_with_stock_pipeline(local_out: Path) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(T2I, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)

    def run() -> np.ndarray:
        g = torch.Generator().manual_seed(1)
        prompts = ["a handwritten two", "the number 5"]
        return pipe(prompts, num_inference_steps=10, output_type="np", generator=g).images

    fp = run()
    # Weights and, through the stored activation grids, W8 activations on every component.
    reports = apply_pipeline(pipe, local_out)
    assert set(reports) == {"unet", "text_encoder", "vae"}
    assert reports["unet"].act_quantized and reports["text_encoder"].act_quantized
    q = run()
    mse = float(np.mean((fp - q) ** 2))
    assert mse > 0 and 10 * np.log10(1 / mse) > 20


def test_load_pipeline_packed_generates_as_dequantize_once(local_out: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from arrowquant.torch import PackedConv2d, PackedLinear, load_pipeline, module_bytes

    def run(pipe: StableDiffusionPipeline) -> np.ndarray:
        pipe.set_progress_bar_config(disable=True)
        g = torch.Generator().manual_seed(4)
        prompts = ["a handwritten four", "the number 9"]
        return pipe(prompts, num_inference_steps=6, output_type="np", generator=g).images

    stock = StableDiffusionPipeline.from_pretrained(T2I, local_files_only=True)
    fp_bytes = module_bytes(stock.unet)
    apply_pipeline(stock, local_out, packed=False)
    want = run(stock)
    # One call, the configs from the source folder the file records; no float weight built.
    # Activations rounded in float as the dequantized layers do: the very same images.
    pipe, reports = load_pipeline(local_out / "model.aq.parquet", model=T2I, int8=False)
    assert isinstance(pipe, StableDiffusionPipeline)
    assert set(reports) == {"unet", "text_encoder", "vae"} and reports["unet"].packed
    packed = [pipe.unet.get_submodule(n) for n in reports["unet"].packed]
    assert all(isinstance(m, PackedLinear | PackedConv2d) for m in packed)
    assert module_bytes(pipe.unet) < 0.35 * fp_bytes
    assert np.array_equal(run(pipe), want)
    # The default (integer kernels where the CPU has them): the same up to rounding.
    fast, _ = load_pipeline(local_out / "model.aq.parquet", model=T2I)
    got = run(fast)
    assert 10 * np.log10(1 / max(float(np.mean((got - want) ** 2)), 1e-12)) > 40
    # diffusers' model offload hooks move the packed buffers like any other.
    pipe.enable_model_cpu_offload(device="cpu")
    assert np.array_equal(run(pipe), want)
    # pipe.to(dtype): float tensors convert, packed bytes stay; generation still close.
    half, _ = load_pipeline(local_out / "model.aq.parquet", model=T2I, dtype=torch.bfloat16)
    assert half.unet.dtype == torch.bfloat16
    got = run(half)
    assert 10 * np.log10(1 / max(float(np.mean((got - want) ** 2)), 1e-12)) > 25


def test_cli_eval_prompts_bad_input(
    tmp_path: Path, local_out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from arrowquant import cli

    labels = tmp_path / "labels.jsonl"
    labels.write_text('{"label": 3}\n')
    ddpm = MODELS / "digits-ddpm"
    cases = [
        (str(ddpm), str(local_out), "--prompts", str(PROMPTS)),  # not a text pipeline
        (str(T2I), str(local_out), "--prompts", str(labels)),  # no prompt column
        (str(T2I), str(local_out), "--prompts", str(tmp_path / "none.jsonl")),
    ]
    for args in cases:
        assert cli.main(["eval", *args, "--samples", "4", "--steps", "2"]) == 2, args
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("arrowquant: error:"), last
    # And the good case through the CLI: per-prompt table, one grid per prompt.
    out = tmp_path / "ev"
    args = ["eval", str(T2I), f"local={local_out}", "--prompts", str(PROMPTS)]
    assert cli.main([*args, "--samples", "30", "--steps", "4", "--out", str(out)]) == 0
    assert "Prompt adherence" in capsys.readouterr().out
    assert len(list(out.glob("grid-prompt-*.png"))) == 30


def test_equalization_and_time_groups_run_on_the_pipeline(tmp_path: Path) -> None:
    """The activation work (DiTAS equalization chosen per layer, adaptive time groups, W8A8)
    on a text-to-image pipeline: the denoiser's layers get several groups, text-side ones one."""
    out = tmp_path / "eq"
    cfg = aq.DiffusionQuantConfig.resolve(
        profile="cloud",
        calibration="synthetic:4",
        calibration_steps=4,
        calibration_cache=str(tmp_path / "cache"),
        equalize=True,
        time_groups=3,
    )
    r = aq.ArrowQuantV2().quantize_diffusion_model(T2I, out, cfg)
    cal = r.summary()["calibration"]
    assert cal["equalize"] and cal["kind"] == "synthetic prompts from the tokenizer's words"
    model = aq.open(out)
    groups = {n: (model.info(n).get("time_aware") or {}).get("num_groups") for n in model.names()}
    assert groups["unet/down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"] > 1
    assert groups["unet/down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"] == 1
    assert groups["text_encoder/encoder.layers.0.mlp.fc1.weight"] == 1
