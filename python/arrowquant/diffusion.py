"""Driving a diffusion model, shared by calibration and evaluation: load a diffusers denoiser (FP,
or with weights read from a quantized model file), draw seeded noise and labels, and run
deterministic DDIM sampling.

Pairing: every setting starts from the same noise and labels and runs the same deterministic
DDIM (eta = 0) schedule, so any difference in the samples comes from the weights alone.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from arrowquant.errors import (
    ArrowQuantError,
    ModelNotFoundError,
    ShapeMismatchError,
    UnsupportedError,
)

if TYPE_CHECKING:
    from arrowquant.single_file import Built

PROBE_STEPS = 10

# Denoisers the harness knows how to call: class name -> calling convention. "t2i": a
# text-conditioned denoiser in a text-to-image pipeline folder (text encoder, tokenizer, VAE).
_KINDS = {"UNet2DModel": "unet", "DiTTransformer2DModel": "dit", "UNet2DConditionModel": "t2i"}
# Classifier-free guidance scale of text-to-image sampling (calibration and evaluation): both
# branches, unconditional and conditional, run in one batch at every step.
GUIDANCE = 4.0


@dataclass
class TextToImage:
    """A text-to-image pipeline's other components: prompts -> text embeddings (tokenizer, text
    encoder), latents -> images (VAE)."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    max_length: int
    guidance: float = GUIDANCE
    components: tuple[str, str] = ("text_encoder", "vae")

    def vocabulary(self) -> list[str]:
        """The tokenizer's plain words (no special or partial tokens), in id order."""
        special = set(self.tokenizer.all_special_tokens)
        vocab = sorted(self.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        # CLIP's BPE marks a word's last piece with </w>: there, only whole words count.
        marked = any(tok.endswith("</w>") for tok, _ in vocab)
        out = []
        for tok, _ in vocab:
            if tok in special or (marked and not tok.endswith("</w>")):
                continue
            word = tok.removesuffix("</w>")
            if word.isalpha():
                out.append(word)
        return out


@dataclass
class Denoiser:
    path: Path
    kind: str  # "unet" | "dit"
    component: str  # subfolder in a pipeline ("unet", "transformer"), "" for a bare model
    module: Any
    scheduler_config: dict[str, Any]
    num_classes: int  # 0: unconditional
    channels: int
    size: int
    text: TextToImage | None = None  # kind "t2i"

    @property
    def image_shape(self) -> tuple[int, int]:
        """(channels, size) of the images it generates: the VAE's for a latent pipeline."""
        if self.text is None:
            return self.channels, self.size
        cfg = self.text.vae.config
        return int(cfg.out_channels), self.size * 2 ** (len(cfg.block_out_channels) - 1)

    def with_state(self, state: dict[str, Any]) -> Any:
        m = copy.deepcopy(self.module)
        m.load_state_dict(state, strict=True)
        return m.eval()


def _find_component(root: Path) -> tuple[str, str]:
    index = root / "model_index.json"
    if index.is_file():
        doc = json.loads(index.read_text())
        for key, value in doc.items():
            if isinstance(value, list) and len(value) == 2 and value[1] in _KINDS:
                if _KINDS[value[1]] == "t2i":
                    missing = [
                        k
                        for k in ("text_encoder", "tokenizer", "vae")
                        if not (isinstance(doc.get(k), list) and doc[k][0])
                    ]
                    if missing:
                        raise UnsupportedError(
                            f"{index}: a {value[1]} without {', '.join(missing)}: sampling it "
                            "needs a text encoder, a tokenizer and a VAE"
                        )
                return key, str(value[1])
        found = [v[1] for v in doc.values() if isinstance(v, list) and len(v) == 2 and v[1]]
        raise UnsupportedError(
            f"{index}: no denoiser the evaluation can sample "
            f"({', '.join(_KINDS)}); components: {', '.join(map(str, found))}"
        )
    config = root / "config.json"
    if config.is_file():
        cls = str(json.loads(config.read_text()).get("_class_name", ""))
        if cls in _KINDS and _KINDS[cls] != "t2i":
            return "", cls
        if cls in _KINDS and _KINDS[cls] == "t2i":
            raise UnsupportedError(
                f"{config}: a lone {cls} cannot be sampled without its pipeline's text encoder "
                "and VAE (quantize the pipeline folder)"
            )
        raise UnsupportedError(f"{config}: class {cls or '?'} is not one of {', '.join(_KINDS)}")
    raise ModelNotFoundError(f"{root}: no model_index.json or config.json (a diffusers folder)")


def drivable(path: str | os.PathLike[str], model_config: str = "") -> tuple[bool, str]:
    """(whether calibration and evaluation can sample this model, why), from its folder's
    configuration files alone (nothing is loaded). A single file: whether its diffusers pipeline
    can be built (arrowquant.single_file; `model_config`: a folder with the model's configs)."""
    root = Path(path)
    if not root.is_dir():
        from arrowquant.single_file import recognise

        return recognise(root, model_config)
    try:
        component, cls = _find_component(root)
    except (ModelNotFoundError, UnsupportedError, ValueError, OSError) as e:
        return False, str(e)
    where = f"{component}/" if component else "the folder"
    return True, f"{where} holds a diffusers {cls} the tool can sample"


def load_reference(path: str | os.PathLike[str]) -> Denoiser:
    import diffusers

    root = Path(path)
    if not root.is_dir():
        raise ModelNotFoundError(f"{root}: not a folder with a diffusers model")
    component, cls = _find_component(root)
    # diffusers' own errors (a config it cannot read, weights that do not match it) become one
    # typed error naming the folder.
    try:
        module = getattr(diffusers, cls).from_pretrained(
            root / component if component else root, low_cpu_mem_usage=False
        )
        module.eval().requires_grad_(False)
        sched_file = root / "scheduler" / "scheduler_config.json"
        sched = json.loads(sched_file.read_text()) if sched_file.is_file() else {}
        cfg = module.config
        kind = _KINDS[cls]
        classes = (
            int(cfg.num_embeds_ada_norm or 0) if kind == "dit" else int(cfg.num_class_embeds or 0)
        )
        size = cfg.sample_size
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        channels = int(cfg.in_channels)
        text = _load_text_to_image(root) if kind == "t2i" else None
        added = kind == "t2i" and (cfg.addition_embed_type or cfg.class_embed_type)
        if added:
            raise UnsupportedError(
                f"{root}: the {cls} takes added conditioning ({added}, as SDXL's does), "
                "which the sampler does not drive yet"
            )
    except ArrowQuantError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure of a third-party loader
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UnsupportedError(f"{root}: diffusers cannot load the {cls}: {first}") from None
    return Denoiser(root, kind, component, module, sched, classes, channels, size, text)


def _load_text_to_image(root: Path) -> TextToImage:
    """The tokenizer, text encoder and VAE of a text-to-image pipeline folder, by the classes its
    model_index.json names (offline: nothing is downloaded)."""
    import diffusers
    import transformers

    doc = json.loads((root / "model_index.json").read_text())

    def load(key: str, lib: Any, **kw: Any) -> Any:
        cls = getattr(lib, str(doc[key][1]), None)
        if cls is None:
            raise UnsupportedError(f"{root}: {key} class {doc[key][1]} is not in {lib.__name__}")
        return cls.from_pretrained(root / key, local_files_only=True, **kw)

    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        tokenizer = load("tokenizer", transformers)
        text_encoder = load("text_encoder", transformers).eval().requires_grad_(False)
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    vae = load("vae", diffusers, low_cpu_mem_usage=False).eval().requires_grad_(False)
    max_length = int(min(tokenizer.model_max_length, text_encoder.config.max_position_embeddings))
    return TextToImage(tokenizer, text_encoder, vae, max_length)


def encode_prompts(ref: Denoiser, text_encoder: Any, prompts: list[str]) -> Any:
    """[N, 2, L, D]: per prompt the text embeddings of "" (the unconditional branch of guidance)
    and of the prompt, by `text_encoder` (the reference's or a quantized copy)."""
    import torch

    assert ref.text is not None
    tok = ref.text.tokenizer
    with torch.inference_mode():
        ids = tok(
            ["", *prompts],
            padding="max_length",
            max_length=ref.text.max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        emb = text_encoder(ids)[0].float()
    uncond = emb[:1].expand(len(prompts), -1, -1)
    return torch.stack([uncond, emb[1:]], dim=1)


def decode_latents(ref: Denoiser, vae: Any, latents: Any) -> Any:
    """Images in [-1, 1] from the sampler's latents, by `vae` (the reference's or a copy)."""
    import torch

    scale = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0)
    with torch.inference_mode():
        return vae.decode(latents / scale).sample.float().clamp(-1.0, 1.0)


def synthetic_prompts(ref: Denoiser, n: int, seed: int) -> list[str]:
    """`n` prompts the tool makes up from the tokenizer's words (2-6 words each, seeded): for
    calibration when no prompts are given."""
    assert ref.text is not None
    words = ref.text.vocabulary() or ["a"]
    rng = np.random.default_rng(seed + 104729)
    return [
        " ".join(words[int(i)] for i in rng.integers(0, len(words), int(rng.integers(2, 7))))
        for _ in range(n)
    ]


def quantized_state(
    ref: Denoiser, quantized: str | os.PathLike[str], built: Built | None = None
) -> dict[str, Any]:
    """The reference's state dict with every tensor read from an ArrowQuant model file (or the
    output folder of `arrowquant quantize`). `built`: the pipeline built from the single file
    the model file was quantized from (its names, and the parts of fused tensors)."""
    import arrowquant as aq

    qpath = aq.model.resolve_model_path(quantized)
    stored = set(aq.open(qpath).names())
    prefix = f"{ref.component}/" if ref.component else ""
    if built is None and prefix and not any(n.startswith(prefix) for n in stored):
        prefix = ""  # quantized from the component folder itself
    return _state_from(qpath, stored, prefix, ref.module, ref.path, built)


def _state_from(
    qpath: Path,
    stored: set[str],
    prefix: str,
    module: Any,
    where: Path,
    built: Built | None = None,
) -> dict[str, Any]:
    import torch

    import arrowquant as aq

    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    names, fused = (built.names, built.fused) if built else ({}, {})
    key = {k: names.get(prefix + k, prefix + k) for k in state}
    missing = [k for k in state if key[k] not in stored]
    if missing:
        raise ShapeMismatchError(
            f"{qpath}: lacks {len(missing)} tensor(s) of {where} (e.g. {key[missing[0]]}); "
            "was it quantized from this model?"
        )
    out = {key[k]: v for k, v in state.items() if prefix + k not in fused}
    model = aq.open(qpath)
    if built:  # the file's shapes (an LDM VAE's 1x1 convolutions are diffusers' Linear)
        for k, v in out.items():
            shape = tuple(model.info(k)["shape"])
            if tuple(v.shape) != shape and v.numel() == math.prod(shape):
                out[k] = v.view(shape)
    aq.load_state_dict(qpath, dtype=torch.float32, out=out)
    for k, v in state.items():  # a third of a fused q/k/v tensor (OpenCLIP)
        if prefix + k in fused:
            whole = torch.from_numpy(model.dequantize(key[k]))
            v.copy_(whole.chunk(3)[fused[prefix + k]].reshape(v.shape))
    return state


@dataclass
class Parts:
    """What one setting samples with: the denoiser, and a text-to-image pipeline's text encoder
    and VAE (None: the reference's)."""

    denoiser: Any
    text_encoder: Any = None
    vae: Any = None


def quantized_parts(
    ref: Denoiser, quantized: str | os.PathLike[str], built: Built | None = None
) -> Parts:
    """Every component the model file holds, loaded into copies of the reference's modules; a
    component the file lacks (quantized from the denoiser's folder alone) stays FP."""
    import arrowquant as aq

    parts = Parts(ref.with_state(quantized_state(ref, quantized, built)))
    if ref.text is None:
        return parts
    qpath = aq.model.resolve_model_path(quantized)
    stored = set(aq.open(qpath).names())
    for key in ref.text.components:
        module = getattr(ref.text, key)
        if any(n.startswith(f"{key}/") for n in (built.names if built else stored)):
            m = copy.deepcopy(module)
            m.load_state_dict(_state_from(qpath, stored, f"{key}/", module, ref.path / key, built))
            setattr(parts, key, m.eval())
    return parts


@dataclass
class Trajectory:
    samples: Any  # [N, C, H, W] float32
    timesteps: list[int]
    eps: list[Any] = field(default_factory=list)  # denoiser output per step
    inputs: dict[int, Any] = field(default_factory=dict)  # x_t at the probed steps
    probe_eps: list[Any] = field(default_factory=list)  # output on another run's x_t
    latents: Any = None  # the sampler's final x (the samples before a VAE decodes them)


def initial_noise(
    ref: Denoiser, n: int, seed: int, prompts: list[str] | None = None
) -> tuple[Any, Any]:
    """(noise, conditioning): class labels cycled over the classes, or for a text-to-image
    pipeline the FP text encoder's embeddings of `prompts` cycled to `n` (synthetic ones when
    None); None for an unconditional model."""
    import torch

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn((n, ref.channels, ref.size, ref.size), generator=g)
    if ref.text is not None:
        given = prompts or synthetic_prompts(ref, n, seed)
        return noise, encode_prompts(ref, ref.text.text_encoder, cycled(given, n))
    labels = torch.arange(n) % ref.num_classes if ref.num_classes else None
    return noise, labels


def cycled(items: list[str], n: int) -> list[str]:
    return [items[i % len(items)] for i in range(n)]


def call_denoiser(ref: Denoiser, module: Any, x: Any, t: Any, labels: Any) -> Any:
    """One prediction of `module` (the reference or a copy with other weights) at timestep t."""
    import torch

    tb = torch.full((x.shape[0],), int(t), dtype=torch.long)
    if ref.kind == "t2i":
        # labels: [N, 2, L, D] (unconditional, conditional); both branches in one batch.
        assert ref.text is not None
        enc = torch.cat([labels[:, 0], labels[:, 1]])
        out = module(torch.cat([x, x]), torch.cat([tb, tb]), encoder_hidden_states=enc).sample
        uncond, cond = out[:, : ref.channels].chunk(2)
        return uncond + ref.text.guidance * (cond - uncond)
    if ref.kind == "unet":
        out = module(x, tb, class_labels=labels).sample
    else:
        out = module(x, timestep=tb, class_labels=labels).sample
    return out[:, : ref.channels]  # learned-sigma models return 2C channels


def sample(
    ref: Denoiser,
    module: Any,
    noise: Any,
    labels: Any,
    steps: int,
    keep_inputs: bool = False,
    probe: Trajectory | None = None,
    vae: Any = None,
) -> Trajectory:
    """DDIM (eta 0) from `noise`; with `probe`, also runs the denoiser on probe's inputs at up
    to PROBE_STEPS evenly spaced steps (the one-step error needs no more, and costs a call).
    A text-to-image pipeline's latents are decoded by `vae` (default: the reference's) into
    `samples`, the latents kept in `latents`."""
    import torch
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(  # type: ignore[no-untyped-call]
        ref.scheduler_config or {"num_train_timesteps": 1000}
    )
    sched.set_timesteps(steps)
    x = noise.clone()
    traj = Trajectory(samples=None, timesteps=[int(t) for t in sched.timesteps])
    n = len(sched.timesteps)
    probe_at = set(np.linspace(0, n - 1, min(n, PROBE_STEPS)).round().astype(int).tolist())
    with torch.inference_mode():
        for i, t in enumerate(sched.timesteps):
            eps = call_denoiser(ref, module, x, t, labels)
            traj.eps.append(eps)
            if keep_inputs and i in probe_at:
                traj.inputs[i] = x
            if probe is not None and i in probe_at:
                traj.probe_eps.append((i, call_denoiser(ref, module, probe.inputs[i], t, labels)))
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    traj.latents = x.float()
    traj.samples = traj.latents
    if ref.text is not None:
        traj.samples = decode_latents(ref, vae if vae is not None else ref.text.vae, x)
    return traj
