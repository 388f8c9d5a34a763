"""Single-file checkpoints as users have them (issue 19): naming layouts found by prefix,
components, and each tensor's role from one table per layout, so that the selection rules treat
a layer by what it is in every layout (arrowquant/naming.h)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

import arrowquant as aq
import arrowquant._core as _core
from arrowquant import ldm_names
from arrowquant.checkpoint import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
from models_util import sd_models, tiny_clip_text  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
T2I = ROOT / "models" / "digits-t2i"
# What every Stable Diffusion single file must show, whatever its layout.
SD_ROLES = {"first layer", "last layer", "time embedding", "norm", "attention", "embedding"}


def _roles(names: list[str]) -> tuple[str, dict[str, tuple[str, str]]]:
    layout, _why, rows = _core.tensor_roles(names)
    return layout, {n: (comp, role) for n, comp, role in rows}


def _sd_single_file(layout: str) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """A Stable Diffusion checkpoint of `layout` as diffusers names per component and as one
    original (LDM) file: (LDM name -> diffusers name, LDM name -> component, extra names of
    SDXL's OpenCLIP encoder)."""
    unet, vae = sd_models(layout)
    clip = [
        f"text_model.{n}" if not n.startswith("text_model.") else n
        for n in tiny_clip_text().state_dict()
    ]
    to_diffusers: dict[str, str] = {}
    component: dict[str, str] = {}
    parts: list[tuple[str, dict[str, str]]] = [
        ("unet", ldm_names.unet(list(unet.state_dict()), dict(unet.config))),
        ("vae", ldm_names.vae(list(vae.state_dict()), dict(vae.config))),
    ]
    clip_map = ldm_names.clip(clip)
    if layout == "sdxl":  # the first encoder under conditioner.embedders.0
        clip_map = {
            k: v.replace("cond_stage_model.", "conditioner.embedders.0.", 1)
            for k, v in clip_map.items()
        }
    parts.append(("text_encoder", clip_map))
    for comp, mapping in parts:
        for src, dst in mapping.items():
            to_diffusers[dst] = src
            component[dst] = comp
    openclip = []
    if layout == "sdxl":
        p = "conditioner.embedders.1.model."
        openclip = [
            p + "token_embedding.weight",
            p + "positional_embedding",
            p + "transformer.resblocks.0.ln_1.weight",
            p + "transformer.resblocks.0.attn.in_proj_weight",
            p + "transformer.resblocks.0.attn.out_proj.weight",
            p + "transformer.resblocks.0.ln_2.bias",
            p + "transformer.resblocks.0.mlp.c_fc.weight",
            p + "ln_final.weight",
            p + "text_projection",
        ]
    return to_diffusers, component, openclip


@pytest.mark.parametrize("layout", ["sd15", "sdxl", "digits-t2i"])
def test_ldm_single_file_roles_match_the_diffusers_names(layout: str) -> None:
    """Every tensor of an original-layout single file (UNet, VAE, text encoders in one name
    list) is found in its component and gets the role its diffusers name has."""
    to_diffusers, component, openclip = _sd_single_file(layout)
    names = [*to_diffusers, *openclip]
    got_layout, got = _roles(names)
    assert got_layout == ("ldm-sdxl" if layout == "sdxl" else "ldm")
    by_comp: dict[str, list[str]] = {}
    for ldm, diff in to_diffusers.items():
        by_comp.setdefault(component[ldm], []).append(diff)
    want: dict[str, str] = {}
    for diff_names in by_comp.values():
        diff_layout, diff_roles = _roles(diff_names)
        assert diff_layout == "diffusers"
        want |= {d: diff_roles[d][1] for d in diff_names}
    misfiled = [
        (ldm, got[ldm], want[diff])
        for ldm, diff in to_diffusers.items()
        if got[ldm] != (component[ldm], want[diff])
    ]
    assert not misfiled, misfiled[:10]
    assert {role for _c, role in got.values()} >= SD_ROLES
    assert got["model.diffusion_model.input_blocks.0.0.weight"] == ("unet", "first layer")
    assert got["model.diffusion_model.out.2.weight"] == ("unet", "last layer")
    assert got["first_stage_model.decoder.conv_out.weight"] == ("vae", "last layer")
    if layout == "sdxl":
        assert got["model.diffusion_model.label_emb.0.0.weight"][1] == "time embedding"
        p = "conditioner.embedders.1.model."
        assert {n: got[n] for n in openclip} == {
            p + "token_embedding.weight": ("text_encoder_2", "embedding"),
            p + "positional_embedding": ("text_encoder_2", "embedding"),
            p + "transformer.resblocks.0.ln_1.weight": ("text_encoder_2", "norm"),
            p + "transformer.resblocks.0.attn.in_proj_weight": ("text_encoder_2", "attention"),
            p + "transformer.resblocks.0.attn.out_proj.weight": ("text_encoder_2", "attention"),
            p + "transformer.resblocks.0.ln_2.bias": ("text_encoder_2", "norm"),
            p + "transformer.resblocks.0.mlp.c_fc.weight": ("text_encoder_2", "other"),
            p + "ln_final.weight": ("text_encoder_2", "norm"),
            p + "text_projection": ("text_encoder_2", "other"),
        }


# Black Forest Labs' FLUX names (flux/model.py), with the role each must get.
FLUX = {
    "img_in.weight": "first layer",
    "txt_in.weight": "other",
    "time_in.in_layer.weight": "time embedding",
    "time_in.out_layer.weight": "time embedding",
    "vector_in.in_layer.weight": "time embedding",
    "guidance_in.out_layer.weight": "time embedding",
    "double_blocks.0.img_mod.lin.weight": "modulation",
    "double_blocks.0.txt_mod.lin.weight": "modulation",
    "double_blocks.0.img_attn.qkv.weight": "attention",
    "double_blocks.0.img_attn.proj.weight": "attention",
    "double_blocks.0.txt_attn.qkv.weight": "attention",
    "double_blocks.0.img_attn.norm.query_norm.scale": "norm",
    "double_blocks.0.txt_attn.norm.key_norm.scale": "norm",
    "double_blocks.0.img_mlp.0.weight": "other",
    "double_blocks.0.txt_mlp.2.weight": "other",
    "single_blocks.0.linear1.weight": "other",
    "single_blocks.0.linear2.weight": "other",
    "single_blocks.0.modulation.lin.weight": "modulation",
    "single_blocks.0.norm.query_norm.scale": "norm",
    "final_layer.adaLN_modulation.1.weight": "modulation",
    "final_layer.linear.weight": "last layer",
}
# Stability's SD3 names (mmdit.py) under ComfyUI's all-in-one prefixes.
SD3 = {
    "model.diffusion_model.x_embedder.proj.weight": ("transformer", "first layer"),
    "model.diffusion_model.pos_embed": ("transformer", "embedding"),
    "model.diffusion_model.t_embedder.mlp.0.weight": ("transformer", "time embedding"),
    "model.diffusion_model.y_embedder.mlp.2.weight": ("transformer", "time embedding"),
    "model.diffusion_model.context_embedder.weight": ("transformer", "other"),
    "model.diffusion_model.joint_blocks.0.x_block.adaLN_modulation.1.weight": (
        "transformer",
        "modulation",
    ),
    "model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight": (
        "transformer",
        "attention",
    ),
    "model.diffusion_model.joint_blocks.0.x_block.attn.ln_q.weight": ("transformer", "norm"),
    "model.diffusion_model.joint_blocks.0.x_block.mlp.fc1.weight": ("transformer", "other"),
    "model.diffusion_model.final_layer.adaLN_modulation.1.weight": ("transformer", "modulation"),
    "model.diffusion_model.final_layer.linear.weight": ("transformer", "last layer"),
    "first_stage_model.decoder.conv_in.weight": ("vae", "first layer"),
    "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": (
        "text_encoder",
        "embedding",
    ),
    "text_encoders.clip_g.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight": (
        "text_encoder_2",
        "attention",
    ),
    "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight": (
        "text_encoder_3",
        "attention",
    ),
    "text_encoders.t5xxl.transformer.shared.weight": ("text_encoder_3", "embedding"),
    "text_encoders.t5xxl.transformer.encoder.final_layer_norm.weight": ("text_encoder_3", "norm"),
}


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_flux_names_get_their_roles(prefix: str) -> None:
    names = [prefix + n for n in FLUX]
    layout, got = _roles(names)
    assert layout == "flux"
    assert {n[len(prefix) :]: r for n, (_c, r) in got.items()} == FLUX
    assert {c for c, _r in got.values()} == {"transformer"}


def test_sd3_single_file_components_and_roles() -> None:
    layout, got = _roles(list(SD3))
    assert layout == "sd3"
    assert got == SD3


def test_diffusers_names_keep_their_layout_and_the_previous_rules() -> None:
    """A diffusers model's names are the "diffusers" layout (no components by prefix), and the
    default rules are the role table's rows with an action, in order."""
    names = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight", "conv_in.weight"]
    layout, got = _roles(names)
    assert layout == "diffusers" and all(c == "" for c, _r in got.values())
    assert got["conv_in.weight"][1] == "first layer"
    rules = _core.default_rules("image")
    assert [w for _p, _b, w in rules][:3] == [
        "embedding",
        "adaLN / scale-shift modulation (sensitive: 3/4 of the threshold)",
        "normalization",
    ]


def _ldm_file(path: Path) -> dict[str, str]:
    """models/digits-t2i (UNet, VAE, CLIP text encoder) as one original-layout file; returns
    pipeline name -> LDM name."""
    ck = load_checkpoint(T2I)
    mapping: dict[str, str] = {}
    out: dict[str, np.ndarray] = {}
    for comp in ck.components:
        name = comp["name"]
        inner = [n.split("/", 1)[1] for n in ck.names() if n.startswith(name + "/")]
        cfg = json.loads(comp["config_json"]) if comp["config_json"] else {}
        m = ldm_names.for_class(comp["class_name"], inner, cfg)
        assert m is not None
        for n in inner:
            a = np.asarray(ck.numpy(f"{name}/{n}"))
            out[m[n]] = a.reshape(ldm_names.vae_shape(m[n], list(a.shape)))
            mapping[f"{name}/{n}"] = m[n]
    safetensors.numpy.save_file(out, str(path))
    return mapping


def _plan(path: Path, **kw: Any) -> dict[str, tuple[int, float]]:
    from arrowquant.api import component_profiles, set_components

    cfg = aq.DiffusionQuantConfig.from_profile("local", **kw)
    core = cfg.to_core()
    set_components(core, cfg, component_profiles(path, cfg), calibrated=False)
    return {n: (b, round(t, 6)) for n, b, t, _w in _core.plan(str(path), core)}


def test_ldm_single_file_job_matches_the_pipeline_folder(tmp_path: Path) -> None:
    """`arrowquant quantize sd-single-file.safetensors OUT` finds three components and quantizes
    each with its own profile, every tensor as the diffusers pipeline's; the dequantized export
    keeps the original names and diffusers' single-file loading reads its UNet."""
    import torch
    from diffusers import UNet2DConditionModel

    src = tmp_path / "t2i-single.safetensors"
    mapping = _ldm_file(src)
    folder, single = _plan(T2I), _plan(src)
    assert {p: folder[p] for p in mapping} == {p: single[ldm] for p, ldm in mapping.items()}
    r = subprocess.run(
        [sys.executable, "-m", "arrowquant", "summary", str(src)],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in ("component unet: ldm-unet", "component vae: ldm-vae", "component text_encoder"):
        assert line in r.stdout, r.stdout
    # Its widths do not fit the SD conventions (no --model-config): weight-only, and it says why.
    from arrowquant.api import resolve_calibration

    _cfg, path = resolve_calibration(src, aq.DiffusionQuantConfig())
    assert path["path"] == "weight-only" and "single file in the ldm layout" in path["why"]
    out = tmp_path / "q"
    rep = aq.ArrowQuantV2().quantize_diffusion_model(
        src, out, aq.DiffusionQuantConfig(calibration="")
    )
    comps = rep.components()
    assert set(comps) == {"unet", "vae", "text_encoder"}
    assert comps["vae"]["profile"] == "cloud" and comps["unet"]["profile"] == "local"
    assert {x["component"] for x in rep.layers} == {"unet", "vae", "text_encoder"}
    md = (out / "report.md").read_text()
    assert "## unet (local)" in md and "## vae (cloud)" in md
    conv_in = next(x for x in rep.layers if x["name"].endswith("input_blocks.0.0.weight"))
    assert conv_in["action"] == "kept" and conv_in["why"] == "first or last layer"
    # A component kept whole, by its name in the single file; an unknown one is named.
    kept = _plan(src, components=["vae=keep"])
    assert all(kept[n][0] == 0 for n in kept if n.startswith("first_stage_model."))
    with pytest.raises(aq.ConfigurationError, match="has no such component.*unet, vae"):
        aq.ArrowQuantV2().quantize_diffusion_model(
            src, tmp_path / "bad", aq.DiffusionQuantConfig(calibration="", components=["foo=edge"])
        )
    # Round trip: the dequantized file has the input's own names and loads as a single file.
    back = tmp_path / "back.safetensors"
    aq.export_safetensors(out, back)
    assert sorted(safetensors.numpy.load_file(str(back))) == sorted(mapping.values())
    unet = UNet2DConditionModel.from_single_file(
        str(back), config=str(T2I), subfolder="unet", local_files_only=True
    )
    ref = UNet2DConditionModel.from_pretrained(T2I, subfolder="unet")
    x = torch.randn(2, 4, ref.config.sample_size, ref.config.sample_size)
    e = torch.randn(2, 8, ref.config.cross_attention_dim)
    with torch.no_grad():
        a, b = ref(x, 500, e).sample, unet(x.clone(), 500, e).sample
    assert float((a - b).norm() / a.norm()) < 0.05


# Each role's treatment by the default rules at the local profile (4 bits, threshold t).
TREATMENT = {
    "first layer": (0, 1.0),
    "last layer": (0, 1.0),
    "embedding": (0, 1.0),
    "norm": (0, 1.0),
    "time embedding": (8, 1.0),
    "modulation": (4, 0.75),
    "attention": (4, 1.0),
    "other": (4, 1.0),
}


@pytest.mark.parametrize("layout", ["flux", "sd3"])
def test_single_file_roles_get_their_treatment(layout: str, tmp_path: Path) -> None:
    """The job's plan for a FLUX or SD3 single file (2-D tensors of each name): every tensor
    gets its role's treatment, whatever its layout calls it."""
    roles = {n: ("transformer", r) for n, r in FLUX.items()} if layout == "flux" else dict(SD3)
    rng = np.random.default_rng(0)
    tensors = {n: rng.normal(0, 0.02, (64, 64)).astype(np.float16) for n in roles}
    path = tmp_path / f"{layout}.safetensors"
    safetensors.numpy.save_file(tensors, str(path))
    plan = _plan(path)
    t = aq.DiffusionQuantConfig.from_profile("local").max_rel_rmse
    got = {n: (b, th / t if b else 1.0) for n, (b, th) in plan.items()}
    want = {n: TREATMENT[role] for n, (_c, role) in roles.items()}
    assert {n: (b, round(s, 3)) for n, (b, s) in got.items()} == want
