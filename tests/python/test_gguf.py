"""GGUF output and input (docs/interop.md), checked with the gguf package's own reader and
dequantizer (ggml's reference arithmetic) and diffusers' GGUF loader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import safetensors.numpy
from gguf.constants import GGMLQuantizationType as GT

import arrowquant as aq
import arrowquant._core as _core
from arrowquant.gguf import open_gguf, types

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models_util import sd_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BLOCK_TYPES = [t for t in types() if t not in ("F16", "BF16", "F32")]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "arrowquant", *args], capture_output=True, text=True, timeout=300
    )


def _checkpoint(path: Path, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    t = {
        "blocks.0.proj.weight": rng.normal(0, 0.02, (64, 512)).astype(np.float16),
        "blocks.0.proj.bias": rng.normal(0, 0.02, 64).astype(np.float32),
        "blocks.0.heavy.weight": (rng.standard_t(4, (32, 256)) * 0.02).astype(np.float32),
        "blocks.0.narrow.weight": rng.normal(0, 0.02, (64, 96)).astype(np.float16),
        "blocks.0.conv.weight": rng.normal(0, 0.02, (16, 32, 3, 3)).astype(np.float16),
    }
    safetensors.numpy.save_file(t, path)
    return t


@pytest.mark.parametrize("qtype", BLOCK_TYPES)
def test_every_type_is_what_the_gguf_package_decodes(tmp_path: Path, qtype: str) -> None:
    src = _checkpoint(tmp_path / "m.safetensors")
    out = tmp_path / "out"
    r = _run(
        "quantize",
        str(tmp_path / "m.safetensors"),
        str(out),
        "--format",
        "gguf",
        "--gguf-type",
        qtype,
        "--no-calibration",
        "--threads",
        "2",
    )
    assert r.returncode == 0, r.stderr
    reader = gguf.GGUFReader(out / "model.gguf")
    ours = open_gguf(out / "model.gguf")
    assert sorted(t.name for t in reader.tensors) == sorted(ours.names()) == sorted(src)
    report = {
        layer["name"]: layer for layer in json.loads((out / "report.json").read_text())["layers"]
    }
    for t in reader.tensors:
        # The gguf package's dequantizer, on the bytes its own reader finds.
        ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(src[t.name].shape)
        got = ours.dequantize(t.name)
        assert got.dtype == np.float32 and got.shape == src[t.name].shape
        assert np.array_equal(got.view(np.uint32), ref.astype(np.float32).view(np.uint32)), t.name
        x = src[t.name].astype(np.float64)
        rel = float(np.sqrt(((got - x) ** 2).sum() / (x**2).sum()))
        layer = report[t.name]
        if layer["action"] == "quantized":
            assert layer["metrics"]["rel_rmse"] == pytest.approx(rel, rel=1e-5, abs=1e-9)
            assert rel < {"Q2_K": 0.4, "Q3_K": 0.22}.get(qtype, 0.12), (t.name, rel)
    assert report["blocks.0.proj.weight"]["format"] == qtype
    # The 3x3 convolution's last dimension (3) fits no block: kept, and the report says why.
    conv = report["blocks.0.conv.weight"]
    assert conv["format"] == "F16" and "not a multiple of" in " ".join(conv["fallbacks"])
    if qtype.endswith("_K"):
        narrow = report["blocks.0.narrow.weight"]
        assert narrow["format"] in ("Q4_0", "Q5_0", "Q8_0")
        assert "96 is not a multiple of 256" in narrow["fallbacks"][0]
    meta = ours.metadata
    assert meta["general.quantization_version"] == 2
    assert meta["arrowquant.tool_version"].startswith("arrowquant ")
    assert json.loads(meta["arrowquant.recipe"])["gguf_type"] == qtype


def test_lower_error_than_the_gguf_package_quantizers_at_the_same_bytes() -> None:
    """gguf's numpy quantizers are ggml's reference (round to nearest, the scale from the
    largest magnitude): at the same type, ArrowQuant's codes must do better."""
    rng = np.random.default_rng(3)
    x = rng.normal(0, 0.02, (64, 1024)).astype(np.float32)
    for qtype, most in (("Q8_0", 0.95), ("Q4_0", 0.96), ("Q5_0", 0.96)):
        ref = gguf.quants.quantize(x, GT[qtype])
        theirs = gguf.quants.dequantize(ref, GT[qtype])
        blocks, metrics = _core.gguf_encode(x, "F32", "x", qtype)
        assert np.asarray(blocks).size == ref.size  # the same bytes
        e_ref = float(np.sqrt(((theirs - x) ** 2).sum() / (x**2).sum()))
        assert metrics["rel_rmse"] <= most * e_ref, (qtype, metrics["rel_rmse"], e_ref)


def test_reads_files_from_the_gguf_package_writer(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(0, 0.02, (4, 256)).astype(np.float32)
    w = gguf.GGUFWriter(str(tmp_path / "ref.gguf"), "test")
    w.add_array("general.tags", ["a", "b"])
    w.add_float32("test.f", 0.25)
    w.add_tensor("q", gguf.quants.quantize(x, GT.Q8_0), raw_dtype=GT.Q8_0)
    w.add_tensor("h", x.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    m = open_gguf(tmp_path / "ref.gguf")
    assert m.metadata["general.tags"] == ["a", "b"] and m.metadata["test.f"] == 0.25
    assert m.info("q")["type"] == "Q8_0" and m.info("q")["shape"] == [4, 256]
    np.testing.assert_array_equal(
        m.dequantize("q"), gguf.quants.dequantize(gguf.quants.quantize(x, GT.Q8_0), GT.Q8_0)
    )
    np.testing.assert_array_equal(m.dequantize("h"), x.astype(np.float16).astype(np.float32))


def test_malformed_gguf_is_one_line_and_exit_2(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "m.safetensors")
    good = tmp_path / "out"
    assert (
        _run(
            "quantize",
            str(tmp_path / "m.safetensors"),
            str(good),
            "--format",
            "gguf",
            "--no-calibration",
        ).returncode
        == 0
    )
    data = (good / "model.gguf").read_bytes()
    cases = {
        "truncated.gguf": data[: len(data) // 2],
        "magic.gguf": b"GGUX" + data[4:],
        "version.gguf": data[:4] + (7).to_bytes(4, "little") + data[8:],
        "tiny.gguf": data[:10],
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        r = _run("inspect", str(tmp_path / name))
        assert r.returncode == 2, (name, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and name in lines[0] and "Traceback" not in r.stderr, r.stderr
    r = _run(
        "quantize",
        str(tmp_path / "m.safetensors"),
        str(tmp_path / "o2"),
        "--format",
        "gguf",
        "--gguf-type",
        "Q9_9",
        "--no-calibration",
    )
    assert r.returncode == 2 and "Q9_9" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_weights_leave_no_output(tmp_path: Path) -> None:
    t = _checkpoint(tmp_path / "m.safetensors")
    t["blocks.0.proj.weight"][3, 5] = np.nan
    safetensors.numpy.save_file(t, tmp_path / "nan.safetensors")
    r = _run(
        "quantize",
        str(tmp_path / "nan.safetensors"),
        str(tmp_path / "out"),
        "--format",
        "gguf",
        "--no-calibration",
    )
    assert r.returncode == 2 and "blocks.0.proj.weight" in r.stderr and "NaN" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "nan.safetensors"]


def test_validate_and_load_state_dict_read_gguf_output(tmp_path: Path) -> None:
    src = _checkpoint(tmp_path / "m.safetensors")
    out = tmp_path / "out"
    assert (
        _run(
            "quantize",
            str(tmp_path / "m.safetensors"),
            str(out),
            "--format",
            "gguf",
            "--no-calibration",
        ).returncode
        == 0
    )
    rows = aq.ArrowQuantV2().validate_quality(tmp_path / "m.safetensors", out)
    assert {r["name"] for r in rows} == {
        "blocks.0.proj.weight",
        "blocks.0.heavy.weight",
        "blocks.0.narrow.weight",
    }
    assert all(0 < r["rel_rmse"] < 0.12 for r in rows)
    sd = aq.load_state_dict(out)
    assert set(sd) == set(src)
    assert tuple(sd["blocks.0.conv.weight"].shape) == (16, 32, 3, 3)
    np.testing.assert_array_equal(
        sd["blocks.0.proj.bias"].float().numpy(),
        src["blocks.0.proj.bias"].astype(np.float16).astype(np.float32),
    )


@pytest.fixture(scope="module")
def t2i_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gguf") / "t2i"
    r = _run(
        "quantize",
        str(ROOT / "models" / "digits-t2i"),
        str(out),
        "--format",
        "gguf",
        "--gguf-type",
        "Q4_0",
        "--no-calibration",
    )
    assert r.returncode == 0, r.stderr
    return out


def test_diffusers_loads_the_file_and_generates(t2i_gguf: Path) -> None:
    """The UNet file loads through diffusers' own GGUF support (GGUFParameter weights, dequantized
    by diffusers at run time) and the pipeline generates what ArrowQuant's decoding gives."""
    import torch
    from diffusers import GGUFQuantizationConfig, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.quantizers.gguf.utils import GGUFParameter

    model = ROOT / "models" / "digits-t2i"
    unet = UNet2DConditionModel.from_single_file(
        str(t2i_gguf / "unet.gguf"),
        config=str(model),
        subfolder="unet",
        quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float32),
        torch_dtype=torch.float32,
        local_files_only=True,
    )
    packed = [p for p in unet.parameters() if isinstance(p, GGUFParameter)]
    assert len(packed) >= 10
    pipe = StableDiffusionPipeline.from_pretrained(
        str(model), unet=unet, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    ours = StableDiffusionPipeline.from_pretrained(
        str(model), safety_checker=None, requires_safety_checker=False
    )
    ours.set_progress_bar_config(disable=True)
    state = aq.load_state_dict(t2i_gguf / "unet.gguf", dtype=torch.float32)
    ours.unet.load_state_dict(state)
    fp = StableDiffusionPipeline.from_pretrained(
        str(model), safety_checker=None, requires_safety_checker=False
    )
    fp.set_progress_bar_config(disable=True)
    kw = {"num_inference_steps": 8, "guidance_scale": 3.0, "output_type": "np"}
    prompts = ["a thin zero", "a seven"]
    a = pipe(prompts, generator=torch.Generator().manual_seed(0), **kw).images
    b = ours(prompts, generator=torch.Generator().manual_seed(0), **kw).images
    c = fp(prompts, generator=g, **kw).images
    assert a.shape == c.shape and np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=2e-3)  # the same codes, two decoders
    psnr = 10 * np.log10(1.0 / float(((a - c) ** 2).mean()))
    assert psnr > 25, psnr  # near the FP pipeline, not noise


def test_pipeline_output_is_one_file_per_component(t2i_gguf: Path) -> None:
    assert sorted(p.name for p in t2i_gguf.glob("*.gguf")) == [
        "text_encoder.gguf",
        "unet.gguf",
        "vae.gguf",
    ]
    m = aq.open(t2i_gguf)
    assert any(n.startswith("unet/") for n in m.names())
    r = _run("inspect", str(t2i_gguf))
    assert r.returncode == 0 and "GGUF v3" in r.stdout and "gguf Q4_0" in r.stdout


@pytest.mark.parametrize("layout", ["sd15", "sdxl", "digits-t2i"])
def test_ldm_names_are_the_inverse_of_diffusers_conversion(layout: str) -> None:
    """Every UNet and VAE name ArrowQuant writes for stable-diffusion.cpp, converted back by
    diffusers' own single-file conversion, lands on the same tensor under its diffusers name."""
    import torch
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    from arrowquant import ldm_names

    unet, vae = sd_models(layout)
    for model, name_map, convert in (
        (unet, ldm_names.unet, convert_ldm_unet_checkpoint),
        (vae, ldm_names.vae, convert_ldm_vae_checkpoint),
    ):
        sd = model.state_dict()
        mapping = name_map(list(sd), dict(model.config))
        assert len(set(mapping.values())) == len(sd)
        ldm = {
            mapping[k]: v.reshape(ldm_names.vae_shape(mapping[k], list(v.shape)))
            for k, v in sd.items()
        }
        back = convert(ldm, dict(model.config))
        assert set(back) == set(sd)
        for k, v in sd.items():
            assert torch.equal(back[k].reshape(v.shape), v), k


def test_sdcpp_names_load_through_diffusers_single_file(tmp_path: Path) -> None:
    """--gguf-names sdcpp: one model.gguf with original names (model.diffusion_model.*,
    first_stage_model.*, cond_stage_model.transformer.text_model.*), which diffusers' single-file
    loading converts back; ArrowQuant reads it back under the checkpoint's names."""
    import torch
    from diffusers import AutoencoderKL, GGUFQuantizationConfig, UNet2DConditionModel

    model = ROOT / "models" / "digits-t2i"
    out = tmp_path / "sdcpp"
    r = _run(
        "quantize",
        str(model),
        str(out),
        "--format",
        "gguf",
        "--gguf-names",
        "sdcpp",
        "--no-calibration",
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.glob("*.gguf")) == ["model.gguf"]
    names = [t.name for t in gguf.GGUFReader(out / "model.gguf").tensors]
    prefixes = (
        "model.diffusion_model.",
        "first_stage_model.",
        "cond_stage_model.transformer.text_model.",
    )
    assert all(n.startswith(prefixes) for n in names)
    assert "model.diffusion_model.input_blocks.0.0.weight" in names  # conv_in
    assert "model.diffusion_model.out.2.weight" in names  # conv_out
    q = GGUFQuantizationConfig(compute_dtype=torch.float32)
    unet = UNet2DConditionModel.from_single_file(
        str(out / "model.gguf"),
        config=str(model),
        subfolder="unet",
        quantization_config=q,
        torch_dtype=torch.float32,
        local_files_only=True,
    )
    ref = UNet2DConditionModel.from_pretrained(model, subfolder="unet")
    x = torch.randn(
        2,
        4,
        ref.config.sample_size,
        ref.config.sample_size,
        generator=torch.Generator().manual_seed(0),
    )
    e = torch.randn(
        2, 8, ref.config.cross_attention_dim, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        a, b = ref(x, 500, e).sample, unet(x, 500, e).sample
    assert float((a - b).norm() / a.norm()) < 0.03
    vae = AutoencoderKL.from_single_file(
        str(out / "model.gguf"),
        config=str(model),
        subfolder="vae",
        quantization_config=q,
        torch_dtype=torch.float32,
        local_files_only=True,
    )
    assert isinstance(vae, AutoencoderKL)
    rows = aq.ArrowQuantV2().validate_quality(model, out)
    assert {r["name"].split("/")[0] for r in rows} == {"unet", "text_encoder"}


def test_export_maps_stored_codes_without_requantizing(tmp_path: Path) -> None:
    """`arrowquant export OUT DEST.gguf`: formats whose codes are a GGUF type's are repacked
    (int4-asym-g32-q6 -> Q4_K decodes to exactly the Parquet file's values; int8-sym-g32-f16 ->
    Q8_0 to them within float rounding)."""
    rng = np.random.default_rng(6)
    w = {
        "a.weight": rng.normal(0, 0.02, (16, 512)).astype(np.float32),
        "b.weight": (rng.standard_t(4, (32, 256)) * 0.02).astype(np.float16),
        "b.bias": rng.normal(0, 0.02, 32).astype(np.float32),
    }
    safetensors.numpy.save_file(w, tmp_path / "m.safetensors")
    (tmp_path / "q6.yaml").write_text("scale_dtype: q6\n")
    (tmp_path / "sym8.yaml").write_text("scheme: sym\nscale_dtype: f16\nbits: 8\n")
    for cfg, qtype, exact in (("q6", "Q4_K", True), ("sym8", "Q8_0", False)):
        out = tmp_path / cfg
        r = _run(
            "quantize",
            str(tmp_path / "m.safetensors"),
            str(out),
            "--config",
            str(tmp_path / f"{cfg}.yaml"),
            "--no-calibration",
        )
        assert r.returncode == 0, r.stderr
        r = _run("export", str(out), str(tmp_path / f"{cfg}.gguf"))
        assert r.returncode == 0 and f"{qtype} x2" in r.stdout, r.stderr
        parquet = aq.open(out)
        for t in gguf.GGUFReader(tmp_path / f"{cfg}.gguf").tensors:
            info = parquet.info(t.name)
            if info["spec"] is None:
                continue
            assert t.tensor_type == GT[qtype]
            got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(info["shape"])
            want = parquet.dequantize(t.name)
            if exact:
                np.testing.assert_array_equal(got, want)
            else:
                np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_export_refuses_what_has_no_gguf_layout(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "m.safetensors")  # a 3x3 convolution and a 96-wide matrix
    (tmp_path / "q6.yaml").write_text("scale_dtype: q6\n")
    out = tmp_path / "out"
    assert (
        _run(
            "quantize",
            str(tmp_path / "m.safetensors"),
            str(out),
            "--config",
            str(tmp_path / "q6.yaml"),
            "--no-calibration",
        ).returncode
        == 0
    )
    r = _run("export", str(out), str(tmp_path / "m.gguf"))
    assert r.returncode == 2 and "blocks.0.conv.weight" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.gguf").exists() and not list(tmp_path.glob("*.tmp-*"))
    rng = np.random.default_rng(7)
    safetensors.numpy.save_file(
        {"n.weight": rng.normal(0, 0.02, (16, 96)).astype(np.float32)}, tmp_path / "n.safetensors"
    )
    assert (
        _run(
            "quantize",
            str(tmp_path / "n.safetensors"),
            str(tmp_path / "n"),
            "--config",
            str(tmp_path / "q6.yaml"),
            "--no-calibration",
        ).returncode
        == 0
    )
    r = _run("export", str(tmp_path / "n"), str(tmp_path / "n.gguf"))
    assert r.returncode == 2 and "n.weight" in r.stderr and "rows of 96" in r.stderr, r.stderr
    r = _run("export", str(tmp_path / "n"), str(tmp_path / "n.bin"))
    assert r.returncode == 2 and ".gguf or .safetensors" in r.stderr


def test_gguf_file_as_quantize_input(tmp_path: Path) -> None:
    """A GGUF file converts to ArrowQuant's format: its tensors decoded (ggml's arithmetic),
    quantized by the job under the file's names; a malformed one is one line and exit 2."""
    src = _checkpoint(tmp_path / "m.safetensors")
    assert (
        _run(
            "quantize",
            str(tmp_path / "m.safetensors"),
            str(tmp_path / "g"),
            "--format",
            "gguf",
            "--gguf-type",
            "Q8_0",
            "--no-calibration",
        ).returncode
        == 0
    )
    out = tmp_path / "aq"
    r = _run("quantize", str(tmp_path / "g" / "model.gguf"), str(out), "--no-calibration")
    assert r.returncode == 0, r.stderr
    m = aq.open(out)
    assert sorted(m.names()) == sorted(src)
    g = open_gguf(tmp_path / "g" / "model.gguf")
    w = g.dequantize("blocks.0.proj.weight")
    q = m.dequantize("blocks.0.proj.weight")
    assert 0 < float(np.sqrt(((q - w) ** 2).sum() / (w**2).sum())) < 0.12
    bias = aq.load_state_dict(out)["blocks.0.proj.bias"].float().numpy()
    np.testing.assert_allclose(bias, src["blocks.0.proj.bias"], rtol=1e-3, atol=1e-6)
    (tmp_path / "bad.gguf").write_bytes((tmp_path / "g" / "model.gguf").read_bytes()[:100])
    r = _run("quantize", str(tmp_path / "bad.gguf"), str(tmp_path / "o2"), "--no-calibration")
    assert r.returncode == 2 and "bad.gguf" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "o2").exists()


def test_calibrated_gguf_codes_lower_each_layers_output_error(tmp_path: Path) -> None:
    """With calibration (the default for a model the tool can sample), each layer's codes come
    from GPTQ on its input second moments: the same types and bytes as the weight-only file,
    lower output error on the held-out calibration rows; the report and the file say so."""
    from arrowquant.calibration import calibrate

    model = ROOT / "models" / "digits-dit"
    base = {
        "calibration_samples": 4,
        "calibration_steps": 4,
        "calibration_cache": str(tmp_path / "cache"),
        "output_format": "gguf",
        "gguf_type": "Q4_K",
    }
    api = aq.ArrowQuantV2()
    g = api.quantize_diffusion_model(model, tmp_path / "g", aq.DiffusionQuantConfig(**base))
    w = api.quantize_diffusion_model(
        model, tmp_path / "w", aq.DiffusionQuantConfig(**base, calibration="")
    )
    assert g.extra["path"]["path"] == "calibrated" and "GPTQ" in g.extra["path"]["why"]
    assert w.extra["path"]["path"] == "weight-only"
    lg = {x["name"]: x for x in g.layers if x["action"] == "quantized"}
    lw = {x["name"]: x for x in w.layers if x["action"] == "quantized"}
    assert sorted(lg) == sorted(lw)
    gptq = [n for n, x in lg.items() if x["method"] == "gptq"]
    assert len(gptq) > 20 and {lg[n]["format"] for n in gptq} == {"Q4_K", "Q5_0"}
    assert all(lg[n]["validation"] == "output" and lg[n]["output_error"] > 0 for n in gptq)
    moments: dict = {}
    calibrate(model, aq.DiffusionQuantConfig(**base, calibration="synthetic"), moments=moments)
    fg, fw = open_gguf(tmp_path / "g"), open_gguf(tmp_path / "w")
    wins = 0
    for n in gptq:
        assert lg[n]["format"] == lw[n]["format"] and lg[n]["stored_bytes"] == lw[n]["stored_bytes"]
        wins += lg[n]["output_error"] < _output_error(fw.dequantize(n), model, n, moments)
        # The report's figure is the file's: what ggml's arithmetic decodes.
        assert lg[n]["output_error"] == pytest.approx(
            _output_error(fg.dequantize(n), model, n, moments), rel=1e-3
        )
    assert wins >= 0.9 * len(gptq)
    # The whole-model check, as for Parquet output: lower one-step error than the weight-only
    # file's on the same fresh trajectories.
    from arrowquant.calibration.check import one_step_check

    check = g.extra["calibration"]["one_step_check"]
    weights_only = one_step_check(model, tmp_path / "w", aq.DiffusionQuantConfig(**base))
    assert 0 < check["mean"] < weights_only["mean"]
    assert "whole-model check" in (tmp_path / "g" / "report.md").read_text()
    meta = fg.metadata
    assert json.loads(meta["arrowquant.recipe"])["path"]["path"] == "calibrated"
    assert "calibration" in json.loads(meta["arrowquant.recipe"])


def _output_error(deq: np.ndarray, model: Path, name: str, moments: dict) -> float:
    """Held-out relative output error of decoded weights (rows along the last dimension)."""
    from arrowquant.checkpoint import load_checkpoint

    w = np.asarray(load_checkpoint(model).numpy(name), dtype=np.float64)
    w = w.reshape(-1, w.shape[-1])
    e = w - deq.reshape(w.shape)
    check = moments[name][1]
    h = np.zeros((check.dim, check.dim))
    h[np.triu_indices(check.dim)] = check.data()  # one block: the packed upper triangle
    h = h + np.triu(h, 1).T
    return float(np.sqrt(np.einsum("ri,ij,rj->", e, h, e) / np.einsum("ri,ij,rj->", w, h, w)))
