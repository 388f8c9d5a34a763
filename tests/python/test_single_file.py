"""Calibrating single-file checkpoints (arrowquant.single_file): the diffusers pipeline built from
the file (configs from shapes or from a folder), and the calibrated job on it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy
import torch

import arrowquant as aq
from arrowquant import ldm_names, single_file

ROOT = Path(__file__).resolve().parents[2]
T2I = ROOT / "models" / "digits-t2i"
sys.path.insert(0, str(ROOT / "tests" / "python"))
from test_naming import _ldm_file  # noqa: E402

FAST = {"calibration": "synthetic", "calibration_samples": 2, "calibration_steps": 3}


def _ldm_shapes(module: Any, mapping: dict[str, str], prefix: str) -> dict[str, list[int]]:
    return {
        mapping[n][len(prefix) :]: ldm_names.vae_shape(mapping[n], list(p.shape))
        for n, p in module.state_dict().items()
    }


def _meta_unet(**cfg: Any) -> Any:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel(**cfg)


SD15 = {
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "layers_per_block": 2,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD21 = SD15 | {
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
}


@pytest.mark.parametrize("known", [SD15, SD21], ids=["sd15", "sd21"])
def test_unet_config_read_off_the_shapes(known: dict[str, Any]) -> None:
    """Stable Diffusion 1.5's and 2.1's UNets (meta device: shapes only) under their original
    names give back their diffusers configs, heads and projections included."""
    unet = _meta_unet(**known)
    shapes = _ldm_shapes(
        unet,
        ldm_names.unet(list(unet.state_dict()), dict(unet.config)),
        ldm_names.UNET_PREFIX,
    )
    got = single_file.unet_config(shapes)
    for key, value in known.items():
        assert got[key] == (list(value) if isinstance(value, tuple) else value), key
    assert got["use_linear_projection"] == known.get("use_linear_projection", False)
    rebuilt = _meta_unet(**got)
    assert {n: p.shape for n, p in rebuilt.state_dict().items()} == {
        n: p.shape for n, p in unet.state_dict().items()
    }


def test_vae_and_clip_configs_read_off_the_shapes() -> None:
    """SD's VAE and CLIP ViT-L text encoder (meta device) under original names."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel

    sd_vae = {"block_out_channels": (128, 256, 512, 512), "latent_channels": 4}
    with torch.device("meta"):
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            **sd_vae,  # type: ignore[arg-type]
        )
        clip = CLIPTextModel(CLIPTextConfig(num_hidden_layers=12, hidden_size=768))
    got = single_file.vae_config(
        _ldm_shapes(
            vae, ldm_names.vae(list(vae.state_dict()), dict(vae.config)), ldm_names.VAE_PREFIX
        )
    )
    assert got["block_out_channels"] == [128, 256, 512, 512] and got["layers_per_block"] == 2
    assert got["latent_channels"] == 4 and got["in_channels"] == got["out_channels"] == 3
    text = single_file.clip_config(
        _ldm_shapes(clip, ldm_names.clip(list(clip.state_dict())), ldm_names.CLIP_PREFIX)
    )
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"]) == (
        768,
        12,
        12,
    )
    assert text["vocab_size"] == 49408 and text["eos_token_id"] == 49407


def _sd_convention_file(path: Path, text: str = "clip") -> dict[str, Any]:
    """A small random SD-family pipeline that follows the SD conventions for what weights do not
    hold (32 norm groups, 64-wide heads) written as one LDM file; returns its modules. `text`:
    "clip" (SD 1.x) or "openclip" (SD 2.x: OpenCLIP names, fused q/k/v, one block more than the
    model conditions on)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(64, 128),
        # Attention at the coarser level only: calibration samples SD's 64x64 latents.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=(1, 2),
    ).eval()
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        scaling_factor=single_file.VAE_SCALING,
    ).eval()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=300,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2 if text == "clip" else 3,
            num_attention_heads=1,
            max_position_embeddings=12,
            hidden_act="quick_gelu" if text == "clip" else "gelu",
            bos_token_id=298,
            eos_token_id=299,
        )
    ).eval()
    out: dict[str, np.ndarray] = {}
    for module, mapping in (
        (unet, ldm_names.unet(list(unet.state_dict()), dict(unet.config))),
        (vae, ldm_names.vae(list(vae.state_dict()), dict(vae.config))),
        (clip, ldm_names.clip(list(clip.state_dict())) if text == "clip" else {}),
    ):
        for n, p in module.state_dict().items():
            if n not in mapping:
                continue
            a = p.detach().numpy()
            out[mapping[n]] = a.reshape(ldm_names.vae_shape(mapping[n], list(a.shape)))
    if text == "openclip":
        fused: dict[str, list[np.ndarray]] = {}
        for n, (name, part) in single_file.openclip_names(list(clip.state_dict())).items():
            a = clip.state_dict()[n].detach().numpy()
            if part is None:
                out["cond_stage_model.model." + name] = a
            else:
                fused.setdefault("cond_stage_model.model." + name, [None] * 3)[part] = a  # type: ignore[list-item]
        out |= {k: np.concatenate(v) for k, v in fused.items()}
    # An original file's noise schedule (SD's scaled-linear betas), outside every component.
    out["betas"] = (np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2).astype(np.float32)
    safetensors.numpy.save_file(out, str(path))
    return {"unet": unet, "vae": vae, "text_encoder": clip}


@pytest.mark.parametrize("text", ["clip", "openclip"])
def test_built_pipeline_computes_what_the_file_holds(text: str, tmp_path: Path) -> None:
    """Configs read off the shapes rebuild the very modules the file was written from: the built
    folder's UNet, VAE and text encoder give the originals' outputs exactly (SD 2.x's OpenCLIP
    encoder: the penultimate block's output, final norm applied)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    src = tmp_path / "sd-like.safetensors"
    orig = _sd_convention_file(src, text)
    ok, why = single_file.recognise(src)
    assert ok, why
    assert "configs from its shapes" in why
    with single_file.built(src) as b:
        unet = UNet2DConditionModel.from_pretrained(b.folder / "unet").eval()
        vae = AutoencoderKL.from_pretrained(b.folder / "vae").eval()
        clip = CLIPTextModel.from_pretrained(b.folder / "text_encoder").eval()
        index = json.loads((b.folder / "model_index.json").read_text())
        assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
        sched = json.loads((b.folder / "scheduler" / "scheduler_config.json").read_text())
        betas = safetensors.numpy.load_file(str(src))["betas"]
        assert np.array_equal(np.float32(sched["trained_betas"]), betas)
        n_fused = 12 if text == "openclip" else 0  # 2 blocks x q/k/v x weight, bias: not mapped
        last = 3 if text == "openclip" else 0  # the OpenCLIP block the model does not use
        n_last = sum(".layers.2." in n for n in orig["text_encoder"].state_dict()) if last else 0
        assert len(b.names) == sum(len(m.state_dict()) for m in orig.values()) - n_last
        assert len(b.fused) == n_fused
        folder = b.folder
    assert not folder.exists()  # removed on exit
    torch.manual_seed(1)
    ids = torch.randint(0, 298, (2, 12))
    x, e = torch.randn(2, 4, 8, 8), torch.randn(2, 12, 64)
    img = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(unet(x, 10, e).sample, orig["unet"](x, 10, e).sample)
        assert torch.equal(vae(img).sample, orig["vae"](img).sample)
        if text == "clip":
            want_text = orig["text_encoder"](ids)[0]
        else:
            h = orig["text_encoder"](ids, output_hidden_states=True).hidden_states[2]
            want_text = orig["text_encoder"].final_layer_norm(h)
        assert torch.equal(clip(ids)[0], want_text)


@pytest.mark.parametrize("text", ["clip", "openclip"])
def test_single_file_calibrated_from_its_shapes(text: str, tmp_path: Path) -> None:
    """No configs given: the calibrated job (statistics, GPTQ, the one-step check) runs on the
    pipeline built from the shapes, with synthetic prompts of the model's own tokens; the
    calibration data lands on the file's names."""
    src = tmp_path / "sd-like.safetensors"
    _sd_convention_file(src, text)
    out = tmp_path / "q"
    rep = aq.ArrowQuantV2().quantize_diffusion_model(
        src,
        out,
        aq.DiffusionQuantConfig(calibration_samples=2, calibration_steps=3, allocate=False),
    )
    assert rep.extra["path"]["path"] == "calibrated", rep.extra["path"]
    cal = rep.extra["calibration"]
    assert cal["single_file"]["configs"].startswith("from the shapes")
    assert "random sequences of its tokens" in cal["single_file"]["tokenizer"]
    assert np.isfinite(cal["one_step_check"]["mean"])
    assert cal["second_moments"]["layers"] > 0
    model = aq.open(out)
    acts = [n for n in model.names() if model.info(n).get("time_aware")]
    assert acts and all(n.startswith(ldm_names.PREFIXES) for n in acts)
    assert any(n.startswith(ldm_names.UNET_PREFIX) for n in acts)
    assert any(n.startswith("cond_stage_model.") for n in acts)  # the text encoder's too
    if text == "openclip":
        assert "fused q/k/v" in cal["single_file"]["weight_only"]
        assert not any("in_proj" in n for n in acts)


def test_single_file_with_configs_matches_the_pipeline_folder(tmp_path: Path) -> None:
    """With the model's diffusers folder for configs, tokenizer and scheduler, the single file
    is calibrated exactly as the folder (the same activation parameters and second moments):
    with widths by the rules, every tensor's stored bytes are equal. (The size allocator's
    widths may differ: the file's metadata bytes it budgets for depend on the tensor order.)"""
    src = tmp_path / "t2i-single.safetensors"
    mapping = _ldm_file(src)
    fixed = FAST | {"allocate": False}
    cfg = aq.DiffusionQuantConfig(**fixed)  # type: ignore[arg-type]
    a = aq.ArrowQuantV2().quantize_diffusion_model(T2I, tmp_path / "folder", cfg)
    b = aq.ArrowQuantV2().quantize_diffusion_model(
        src,
        tmp_path / "single",
        aq.DiffusionQuantConfig(model_config=str(T2I), **fixed),  # type: ignore[arg-type]
    )
    assert b.extra["path"]["path"] == "calibrated"
    assert b.extra["calibration"]["single_file"]["configs"] == str(T2I)
    ca, cb = a.extra["calibration"], b.extra["calibration"]
    assert ca["one_step_check"] == cb["one_step_check"]
    assert ca["second_moments"] == cb["second_moments"]
    fa, fb = aq.open(tmp_path / "folder"), aq.open(tmp_path / "single")
    assert sorted(mapping.values()) == sorted(fb.names())
    quantized = 0
    for name, ldm in mapping.items():
        qa, qb = fa.info(name), fb.info(ldm)
        assert (qa["spec"], qa["time_aware"]) == (qb["spec"], qb["time_aware"]), name
        if qa["spec"] is None:
            continue
        ta, tb = fa.tensor(name), fb.tensor(ldm)
        assert np.array_equal(ta.codes, tb.codes), name
        assert np.array_equal(ta.scales, tb.scales), name
        assert np.array_equal(ta.zeros, tb.zeros), name
        quantized += 1
    assert quantized > 100
    # The default job (widths by the size budget) meets each component's size as the folder's.
    c = aq.ArrowQuantV2().quantize_diffusion_model(
        src,
        tmp_path / "sized",
        aq.DiffusionQuantConfig(model_config=str(T2I), **FAST),  # type: ignore[arg-type]
    )
    assert c.extra["budget"].count("met at") == 3, c.extra["budget"]


def test_unrecognised_single_file_calibration_is_a_clear_error(tmp_path: Path) -> None:
    """The bundled pipeline's widths do not fit the SD conventions: auto says weight-only and
    why; asking for calibration is a typed error naming the file (CLI: exit 2, one line)."""
    src = tmp_path / "t2i-single.safetensors"
    _ldm_file(src)
    ok, why = single_file.recognise(src)
    assert not ok and "--model-config" in why and "48" in why
    with pytest.raises(aq.UnsupportedError, match="t2i-single.safetensors"):
        aq.ArrowQuantV2().quantize_diffusion_model(
            src, tmp_path / "q", aq.DiffusionQuantConfig(calibration="synthetic")
        )
    r = subprocess.run(
        [sys.executable, "-m", "arrowquant", "quantize", str(src), str(tmp_path / "q2")]
        + ["--calibration", "synthetic"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "q2").exists()


def test_single_file_gguf_output_is_calibrated(tmp_path: Path) -> None:
    """GGUF output of a recognised single file: GPTQ codes from the built pipeline's second
    moments (mapped to the file's names), the one-step check on the GGUF file (an OpenCLIP
    fused q/k/v tensor read back in three)."""
    src = tmp_path / "sd-like.safetensors"
    _sd_convention_file(src, "openclip")
    cfg = aq.DiffusionQuantConfig(calibration_samples=1, calibration_steps=2, output_format="gguf")
    rep = aq.ArrowQuantV2().quantize_diffusion_model(src, tmp_path / "q", cfg)
    assert rep.extra["path"]["path"] == "calibrated", rep.extra["path"]
    cal = rep.extra["calibration"]
    assert cal["single_file"]["layout"] == "ldm" and np.isfinite(cal["one_step_check"]["mean"])
    fitted = [x["name"] for x in rep.layers if x.get("output_error") is not None]
    assert any(n.startswith(ldm_names.UNET_PREFIX) for n in fitted), fitted[:5]
