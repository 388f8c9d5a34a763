"""Calibrating a single-file checkpoint: the matching diffusers pipeline is built from the file,
offline, so the calibrated path (sampling, activation statistics, GPTQ, the one-step check) runs
on it as on a pipeline folder, and what calibration measured is mapped back to the file's names.

Supported: the original (CompVis/LDM) layout of Stable Diffusion 1.x/2.x-family models, a UNet,
a VAE and a CLIP (SD 1.x) or OpenCLIP (SD 2.x) text encoder in one file. The configuration comes
from `model_config` (a diffusers folder with the model's configs, tokenizer and scheduler, as
diffusers' `from_single_file(config=)` takes), or is read off the tensors' shapes with the
SD 1.x/2.x conventions for what the weights do not hold (attention heads, norm groups, VAE
scaling factor, noise schedule). Without a tokenizer, the synthetic prompts are random sequences
of the text encoder's own tokens.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arrowquant import ldm_names
from arrowquant.errors import ArrowQuantError, UnsupportedError

# Components built, with their diffusers / transformers classes and weight file names.
_PARTS = {
    "unet": ("diffusers", "UNet2DConditionModel", "diffusion_pytorch_model.safetensors"),
    "vae": ("diffusers", "AutoencoderKL", "diffusion_pytorch_model.safetensors"),
    "text_encoder": ("transformers", "CLIPTextModel", "model.safetensors"),
}
# What the weights do not say, by the SD 1.x/2.x convention (diffusers' single-file defaults).
NORM_GROUPS = 32
SD1_CROSS_ATTENTION_DIM = 768  # SD 1.x: 8 heads at every level; otherwise 64-wide heads
SD1_HEADS = 8
HEAD_WIDTH = 64
VAE_SCALING = 0.18215
SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
CONVENTIONS = (
    f"SD 1.x/2.x conventions for what the weights do not hold: {NORM_GROUPS} norm groups, "
    f"{SD1_HEADS} attention heads at cross-attention width {SD1_CROSS_ATTENTION_DIM} and "
    f"{HEAD_WIDTH}-wide heads otherwise, VAE scaling {VAE_SCALING}, epsilon prediction"
)


@dataclass
class Built:
    """A diffusers pipeline folder made from a single file."""

    folder: Path
    names: dict[str, str]  # "component/diffusers name" -> the tensor's name in the single file
    # "component/diffusers name" -> which third of the file's fused q/k/v tensor it is
    fused: dict[str, int] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    def to_file(self, table: dict[str, Any]) -> dict[str, Any]:
        """A per-tensor table (plans, moments, sensitivity) keyed by the file's names. A fused
        tensor's calibration data would be its three parts' (equalized apart): not mapped, it
        is quantized from its weights alone."""
        return {self.names[k]: v for k, v in table.items() if k not in self.fused}


def naming(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The naming of a .safetensors single file of several components, if it is one."""
    p = Path(path)
    if p.suffix != ".safetensors" or not p.is_file():
        return None
    from arrowquant.checkpoint import load_checkpoint

    try:
        found = load_checkpoint(os.fspath(p)).naming
    except ArrowQuantError:
        return None  # the job reports a malformed file itself
    return found if found["components"] else None


def recognise(path: str | os.PathLike[str], model_config: str = "") -> tuple[bool, str]:
    """(whether the file's diffusers pipeline can be built for calibration, why), from the
    layout, the components and the shapes (nothing is loaded)."""
    modules, why = _recognised(path, model_config)
    return modules is not None, why


def _recognised(
    path: str | os.PathLike[str], model_config: str
) -> tuple[dict[str, tuple[Any, dict[str, tuple[str, int | None]]]] | None, str]:
    """recognise's answer, with the modules it checked (parts) where it is yes."""
    found = naming(path)
    name = Path(path).name
    if found is None:
        return None, f"{name} is a file, not a diffusers folder with a sampler to drive"
    layout = found["layout"]
    comps = {c["name"]: c for c in found["components"]}
    listed = ", ".join(comps)
    where = f"{name} is a single file in the {layout} layout ({listed})"
    if layout != "ldm":
        reason = {
            "ldm-sdxl": "SDXL's added conditioning (pooled text, size and crop) is not driven "
            "by the sampler yet",
        }.get(layout, "the sampler drives UNet (Stable Diffusion 1.x-family) pipelines only")
        return None, f"{where}; {reason}: weight-only, selection by each tensor's role"
    missing = [c for c in _PARTS if c not in comps]
    if missing:
        return None, f"{where}; calibration needs {', '.join(missing)} too: weight-only"
    try:
        modules = parts(path, model_config)
    except (UnsupportedError, KeyError, ValueError, StopIteration) as e:
        return None, f"{where}; {e}: weight-only, selection by each tensor's role"
    source = (
        f"configs from {model_config}"
        if model_config
        else f"configs from its shapes ({CONVENTIONS})"
    )
    return modules, f"{where}: its diffusers pipeline is built from the file, {source}"


def _shapes(path: str | os.PathLike[str], prefix: str) -> dict[str, list[int]]:
    from arrowquant.checkpoint import load_checkpoint

    return {
        i.name[len(prefix) :]: list(i.shape)
        for i in load_checkpoint(os.fspath(path)).infos()
        if i.name.startswith(prefix)
    }


def _blocks(shapes: dict[str, list[int]], pattern: str) -> list[int]:
    """The distinct block numbers of names matching `pattern` (one group: the number)."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for n in shapes if (m := rx.match(n))})


def unet_config(shapes: dict[str, list[int]]) -> dict[str, Any]:
    """UNet2DConditionModel config of an LDM UNet (names after model.diffusion_model.)."""
    if any(n.startswith("label_emb.") for n in shapes):
        raise UnsupportedError("the UNet takes added conditioning (label_emb)")
    levels: list[list[tuple[int, int]]] = [[]]  # per level: (channels, transformer depth)
    for k in _blocks(shapes, r"input_blocks\.(\d+)\.")[1:]:
        if f"input_blocks.{k}.0.op.weight" in shapes:
            levels.append([])
            continue
        conv = shapes.get(f"input_blocks.{k}.0.in_layers.2.weight")
        if conv is None:
            raise UnsupportedError(f"input block {k} is neither a resnet nor a downsampler")
        depth = len(_blocks(shapes, rf"input_blocks\.{k}\.1\.transformer_blocks\.(\d+)\."))
        levels[-1].append((conv[0], depth))
    per = {len(level) for level in levels}
    if len(per) != 1 or 0 in per:
        raise UnsupportedError(f"levels with different numbers of resnets ({sorted(per)})")
    channels = [level[0][0] for level in levels]
    attn = [level[0][1] > 0 for level in levels]
    cross = next(s for n, s in shapes.items() if n.endswith("attn2.to_k.weight"))[1]
    proj = next(s for n, s in shapes.items() if n.endswith(".proj_in.weight"))
    if "middle_block.1.proj_in.weight" not in shapes:
        raise UnsupportedError("a middle block without attention")
    heads: int | list[int] = (
        SD1_HEADS if cross == SD1_CROSS_ATTENTION_DIM else [c // HEAD_WIDTH for c in channels]
    )
    bad = [c for c in channels if c % NORM_GROUPS or c % HEAD_WIDTH and heads != SD1_HEADS]
    if bad:
        raise UnsupportedError(
            f"channels {channels} do not fit {NORM_GROUPS} norm groups and {HEAD_WIDTH}-wide "
            "heads (the SD conventions); give the model's diffusers configs (--model-config DIR)"
        )
    depths = [max(1, level[0][1]) for level in levels]
    conv_in = shapes["input_blocks.0.0.weight"]
    return {
        "sample_size": 64,
        "in_channels": conv_in[1],
        "out_channels": shapes["out.2.weight"][0],
        "block_out_channels": channels,
        "layers_per_block": per.pop(),
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "transformer_layers_per_block": depths[0] if len(set(depths)) == 1 else depths,
        "cross_attention_dim": cross,
        "attention_head_dim": heads,
        "use_linear_projection": len(proj) == 2,
        "norm_num_groups": NORM_GROUPS,
        "time_embedding_dim": shapes["time_embed.0.weight"][0],
    }


def vae_config(shapes: dict[str, list[int]]) -> dict[str, Any]:
    """AutoencoderKL config of an LDM VAE (names after first_stage_model.)."""
    levels = _blocks(shapes, r"encoder\.down\.(\d+)\.")
    per = len(_blocks(shapes, r"encoder\.down\.0\.block\.(\d+)\."))
    channels = [shapes[f"encoder.down.{i}.block.0.conv1.weight"][0] for i in levels]
    n = len(channels)
    return {
        "in_channels": shapes["encoder.conv_in.weight"][1],
        "out_channels": shapes["decoder.conv_out.weight"][0],
        "latent_channels": shapes["decoder.conv_in.weight"][1],
        "block_out_channels": channels,
        "layers_per_block": per,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "norm_num_groups": NORM_GROUPS,
        "scaling_factor": VAE_SCALING,
        "sample_size": 512,
    }


def clip_config(shapes: dict[str, list[int]]) -> dict[str, Any]:
    """CLIPTextConfig of an SD 1.x text encoder (names after cond_stage_model.transformer.)."""
    vocab, hidden = shapes["text_model.embeddings.token_embedding.weight"]
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": shapes["text_model.encoder.layers.0.mlp.fc1.weight"][0],
        "num_hidden_layers": len(_blocks(shapes, r"text_model\.encoder\.layers\.(\d+)\.")),
        "num_attention_heads": hidden // HEAD_WIDTH,
        "max_position_embeddings": shapes["text_model.embeddings.position_embedding.weight"][0],
        "projection_dim": hidden,
        "hidden_act": "quick_gelu",
        # CLIP's BPE vocabulary ends with its two special tokens.
        "bos_token_id": vocab - 2,
        "eos_token_id": vocab - 1,
        "pad_token_id": vocab - 1,
    }


def openclip_config(shapes: dict[str, list[int]]) -> dict[str, Any]:
    """CLIPTextConfig of SD 2.x's OpenCLIP text encoder (names after cond_stage_model.model.).
    SD 2.x conditions on the penultimate block's output, so the model has one block fewer than
    the file (diffusers' conversion drops the last)."""
    vocab, hidden = shapes["token_embedding.weight"]
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": shapes["transformer.resblocks.0.mlp.c_fc.weight"][0],
        "num_hidden_layers": len(_blocks(shapes, r"transformer\.resblocks\.(\d+)\.")) - 1,
        "num_attention_heads": hidden // HEAD_WIDTH,
        "max_position_embeddings": shapes["positional_embedding"][0],
        "projection_dim": hidden,
        "hidden_act": "gelu",
        "bos_token_id": vocab - 2,
        "eos_token_id": vocab - 1,
        "pad_token_id": 0,  # OpenCLIP pads with token 0
    }


_OPENCLIP = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}
_QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")


def openclip_names(names: list[str]) -> dict[str, tuple[str, int | None]]:
    """CLIPTextModel names -> (OpenCLIP name, third of a fused q/k/v in-projection or None)."""
    out: dict[str, tuple[str, int | None]] = {}
    for n in names:
        inner = n.removeprefix("text_model.")
        fixed = {
            "embeddings.token_embedding.weight": "token_embedding.weight",
            "embeddings.position_embedding.weight": "positional_embedding",
            "final_layer_norm.weight": "ln_final.weight",
            "final_layer_norm.bias": "ln_final.bias",
        }
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", inner)
        if inner in fixed:
            out[n] = (fixed[inner], None)
        elif m and m.group(2) in _QKV:
            block, kind = m.group(1), m.group(3)
            out[n] = (f"transformer.resblocks.{block}.attn.in_proj_{kind}", _QKV.index(m.group(2)))
        elif m and m.group(2) in _OPENCLIP:
            out[n] = (
                f"transformer.resblocks.{m.group(1)}.{_OPENCLIP[m.group(2)]}.{m.group(3)}",
                None,
            )
        else:
            raise ValueError(f"no OpenCLIP name for text encoder tensor '{n}'")
    return out


def configs(path: str | os.PathLike[str], model_config: str = "") -> dict[str, dict[str, Any]]:
    """Each component's config: from `model_config`'s component folders, or from the shapes."""
    if model_config:
        root = Path(model_config)
        out = {}
        for comp in _PARTS:
            f = root / comp / "config.json"
            if not f.is_file():
                raise UnsupportedError(f"--model-config {root}: no {comp}/config.json")
            out[comp] = json.loads(f.read_text())
        return out
    comps = {c["name"]: c["prefix"] for c in naming(path)["components"]}  # type: ignore[index]
    text = _shapes(path, comps["text_encoder"])
    return {
        "unet": unet_config(_shapes(path, comps["unet"])),
        "vae": vae_config(_shapes(path, comps["vae"])),
        "text_encoder": openclip_config(text) if _openclip(comps) else clip_config(text),
    }


def _openclip(prefixes: dict[str, str]) -> bool:
    """SD 2.x: the text encoder is OpenCLIP's (cond_stage_model.model.*)."""
    return prefixes["text_encoder"] != ldm_names.CLIP_PREFIX


def _module(comp: str, config: dict[str, Any]) -> Any:
    """The component's module on the meta device: its parameter names and shapes."""
    import diffusers
    import torch
    import transformers

    lib, cls, _ = _PARTS[comp]
    with torch.device("meta"):
        if lib == "diffusers":
            return getattr(diffusers, cls).from_config(config)
        keys = transformers.CLIPTextConfig().to_dict().keys()
        text = transformers.CLIPTextConfig(**{k: v for k, v in config.items() if k in keys})
        return transformers.CLIPTextModel(text)


def _name_map(comp: str, module: Any, prefix: str) -> dict[str, tuple[str, int | None]]:
    """diffusers name -> (the file's name, which third of a fused q/k/v tensor or None), for
    every tensor of the module's state dict."""
    names = list(module.state_dict())
    if comp == "text_encoder" and prefix != ldm_names.CLIP_PREFIX:
        return {k: (prefix + v, part) for k, (v, part) in openclip_names(names).items()}
    if comp == "text_encoder":
        mapped, own = ldm_names.clip(names), ldm_names.CLIP_PREFIX
    elif comp == "unet":
        mapped, own = ldm_names.unet(names, dict(module.config)), ldm_names.UNET_PREFIX
    else:
        mapped, own = ldm_names.vae(names, dict(module.config)), ldm_names.VAE_PREFIX
    return {k: (prefix + v[len(own) :], None) for k, v in mapped.items()}


def parts(
    path: str | os.PathLike[str], model_config: str = ""
) -> dict[str, tuple[Any, dict[str, tuple[str, int | None]]]]:
    """Per component: its module on the meta device and _name_map's names, every name checked
    against the file (present, the same number of elements)."""
    from arrowquant.checkpoint import load_checkpoint

    found = naming(path)
    if found is None:
        raise UnsupportedError(f"{Path(path).name}: not a single file of several components")
    prefixes = {c["name"]: c["prefix"] for c in found["components"]}
    infos = {i.name: i for i in load_checkpoint(os.fspath(path)).infos()}
    cfgs = configs(path, model_config)
    out = {}
    for comp, (_, cls, _) in _PARTS.items():
        module = _module(comp, cfgs[comp])
        mapping = _name_map(comp, module, prefixes[comp])
        for dname, param in module.state_dict().items():
            fname, part = mapping[dname]
            info = infos.get(fname)
            if info is None:
                raise UnsupportedError(
                    f"the {cls} built for {comp} has '{dname}', the file no '{fname}'"
                )
            if info.numel != param.numel() * (1 if part is None else len(_QKV)):
                raise UnsupportedError(
                    f"'{info.name}' has shape {list(info.shape)}, the {cls} built for {comp} "
                    f"expects {list(param.shape)}"
                )
        out[comp] = (module, mapping)
    return out


def _tokenizer(folder: Path, vocab: int, max_length: int, pad: int) -> None:
    """A word-level tokenizer whose words are the text encoder's token ids written in letters:
    synthetic prompts made of it are random sequences of the model's own tokens. It pads with
    token `pad`, as the model's own tokenizer does (CLIP: the end token; OpenCLIP: 0)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    def word(i: int) -> str:
        s = ""
        while True:
            s = chr(ord("a") + i % 26) + s
            i = i // 26 - 1
            if i < 0:
                return "t" + s

    bos, eos = vocab - 2, vocab - 1
    words = {word(i): i for i in range(bos)} | {"<|startoftext|>": bos, "<|endoftext|>": eos}
    tk = Tokenizer(models.WordLevel(words, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)],
    )
    PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tk,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token=next(w for w, i in words.items() if i == pad),
        unk_token="<|endoftext|>",
        model_max_length=max_length,
    ).save_pretrained(folder)


def _scheduler(path: str | os.PathLike[str]) -> dict[str, Any]:
    """SD's DDIM settings; the file's own noise schedule (`betas`) where it holds one."""
    from safetensors import safe_open

    out = dict(SCHEDULER)
    with safe_open(os.fspath(path), "np") as f:
        if "betas" in f.keys():  # noqa: SIM118 - safe_open has no __contains__
            betas = f.get_tensor("betas").astype("float64").ravel()
            out |= {"num_train_timesteps": len(betas), "trained_betas": betas.tolist()}
    return out


@contextlib.contextmanager
def built(path: str | os.PathLike[str], model_config: str = "") -> Iterator[Built]:
    """The file's diffusers pipeline in a temporary folder (removed on exit)."""
    import diffusers
    import safetensors.torch
    from safetensors import safe_open

    modules, why = _recognised(path, model_config)
    if modules is None:
        raise UnsupportedError(why)
    found = naming(path)
    assert found is not None
    with tempfile.TemporaryDirectory(prefix="arrowquant-single-file-") as d:
        folder = Path(d)
        names: dict[str, str] = {}
        fused: dict[str, int] = {}
        index: dict[str, Any] = {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": diffusers.__version__,
            "requires_safety_checker": False,
            "scheduler": ["diffusers", "DDIMScheduler"],
            "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
        }
        with safe_open(os.fspath(path), "pt") as f:
            for comp, (lib, cls, weights) in _PARTS.items():
                module, mapping = modules[comp]
                state = {}
                for dname, param in module.state_dict().items():
                    fname, part = mapping[dname]
                    t = f.get_tensor(fname)
                    if part is not None:
                        t = t.chunk(len(_QKV))[part]
                    state[dname] = t.reshape(param.shape).contiguous()
                names |= {f"{comp}/{d}": fn for d, (fn, _) in mapping.items()}
                fused |= {f"{comp}/{d}": p for d, (_, p) in mapping.items() if p is not None}
                (folder / comp).mkdir()
                safetensors.torch.save_file(state, str(folder / comp / weights))
                del state
                if lib == "diffusers":
                    module.save_config(folder / comp)
                else:
                    module.config.save_pretrained(folder / comp)
                index[comp] = [lib, cls]
        if model_config:
            root = Path(model_config)
            for comp in ("tokenizer", "scheduler"):
                if not (root / comp).is_dir():
                    raise UnsupportedError(f"--model-config {root}: no {comp}/ folder")
                shutil.copytree(root / comp, folder / comp)
            given = root / "model_index.json"
            doc = json.loads(given.read_text()) if given.is_file() else {}
            index["tokenizer"] = doc.get("tokenizer", index["tokenizer"])
            index["scheduler"] = doc.get("scheduler", index["scheduler"])
            tokens = f"the tokenizer of {root}"
        else:
            text = modules["text_encoder"][0].config
            _tokenizer(
                folder / "tokenizer",
                text.vocab_size,
                text.max_position_embeddings,
                text.pad_token_id,
            )
            (folder / "scheduler").mkdir()
            (folder / "scheduler" / "scheduler_config.json").write_text(
                json.dumps(_scheduler(path))
            )
            tokens = "none in the file: synthetic prompts are random sequences of its tokens"
        (folder / "model_index.json").write_text(json.dumps(index, indent=2))
        summary = {
            "layout": found["layout"],
            "configs": model_config or f"from the shapes ({CONVENTIONS})",
            "tokenizer": tokens,
            "tensors_mapped": len(names) - len(fused),
        }
        n_fused = len({names[k] for k in fused if k.endswith("weight")})
        if n_fused:
            summary["weight_only"] = (
                f"{n_fused} fused q/k/v in-projections of the OpenCLIP text encoder (their "
                "calibration data is their three parts'): quantized from their weights"
            )
        yield Built(folder, names, fused, summary)
