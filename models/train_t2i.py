"""Trains the text-to-image reference pipeline on scikit-learn's digits (no download).

    .venv/bin/python models/train_t2i.py

`digits-t2i/` is a Stable Diffusion pipeline in miniature, saved so that
`StableDiffusionPipeline.from_pretrained("models/digits-t2i", local_files_only=True)` loads it:
- `tokenizer/`: a word-level `tokenizers` vocabulary of the prompt words, built here (CLIP's BPE
  vocabulary is 49k tokens; this one is the few dozen words the prompts use), loaded as a
  `PreTrainedTokenizerFast` with CLIP's special tokens and 16-token padding;
- `text_encoder/`: a tiny transformers `CLIPTextModel` (2 layers, width 64), trained jointly with
  the denoiser;
- `vae/`: a small `AutoencoderKL` (16x16x1 pixels <-> 8x8x4 latents), trained first;
- `unet/`: a `UNet2DConditionModel` with cross-attention on the text encoder's hidden states;
- `scheduler/`: DDIM over the same 1000-step schedule as the other models.

Prompts say what the digits data shows: the digit (by name or numeral) and, from the image's
ink, its stroke ("a thin seven", "a bold handwritten 3", "the digit zero"). One prompt in ten is
dropped to "" while training, so classifier-free guidance works. Seeded, deterministic
algorithms, 2 threads; EMA weights; `training.json` records the settings and the wall time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from schedule import ema_step, lr_at

from arrowquant.eval.digits import IMAGE_SIZE, load_digits_images

HERE = Path(__file__).resolve().parent
OUT = HERE / "digits-t2i"
THREADS = 2
MAX_TOKENS = 16
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
STYLES = ("thin", "bold")
SPECIAL = ("<|endoftext|>", "<|startoftext|>", "<|unk|>")
PROMPT_DROPOUT = 0.1


def vocabulary() -> list[str]:
    words = ["a", "an", "the", "digit", "number", "handwritten", "written", "of", "image", "small"]
    return [*SPECIAL, *words, *NAMES, *STYLES, *(str(d) for d in range(10))]


def prompt_for(label: int, style: str, rng: np.random.Generator) -> str:
    """One of the prompt templates for a digit and its stroke ("" = ordinary)."""
    word = NAMES[label] if rng.random() < 0.7 else str(label)
    adj = f"{style} " if style else ""
    templates = (
        f"a {adj}handwritten {word}",
        f"the digit {word}",
        f"a {adj}{word}",
        f"an image of a {adj}{word}",
        f"number {word}",
    )
    if style:  # the stroke is only said where a template has room for it
        templates = templates[0], templates[2], templates[3]
    return templates[int(rng.integers(len(templates)))]


def strokes(images: torch.Tensor, labels: torch.Tensor) -> list[str]:
    """Per image: "thin" / "" / "bold" by its ink (mean brightness) within its digit's tertiles."""
    ink = ((images + 1) / 2).mean(dim=(1, 2, 3)).numpy()
    out = [""] * len(ink)
    for d in range(10):
        idx = np.flatnonzero(labels.numpy() == d)
        lo, hi = np.quantile(ink[idx], [1 / 3, 2 / 3])
        for i in idx:
            out[i] = "thin" if ink[i] < lo else "bold" if ink[i] > hi else ""
    return out


def make_tokenizer() -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vocabulary())}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|unk|>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    bos, eos = vocab["<|startoftext|>"], vocab["<|endoftext|>"]
    tk.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|unk|>",
        model_max_length=MAX_TOKENS,
    )


def make_text_encoder(vocab_size: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=1,
        eos_token_id=0,
        pad_token_id=0,
        projection_dim=64,
    )
    return CLIPTextModel(cfg)


def make_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
    )


def make_unet() -> Any:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(48, 96),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=4,  # diffusers' name for the number of heads here
        norm_num_groups=16,
    )


def make_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def train_vae(
    images: torch.Tensor, steps: int, batch: int, lr: float
) -> tuple[Any, dict[str, Any]]:
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(2)
    t0, losses = time.perf_counter(), []
    vae.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr)
        x = images[torch.randint(0, images.shape[0], (batch,), generator=gen)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / post.mean[0].numel()
        loss = torch.nn.functional.mse_loss(rec, x) + 1e-3 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 500 == 0 or step == steps - 1:
            print(f"vae step {step:5d} loss {np.mean(losses[-100:]):.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        post = vae.encode(images).latent_dist
        mse = float(torch.nn.functional.mse_loss(vae.decode(post.mean).sample, images))
        # The latents the denoiser sees have unit variance, as Stable Diffusion's 0.18215 does.
        vae.register_to_config(scaling_factor=float(1.0 / post.mean.std()))
    info = {
        "steps": steps,
        "lr": lr,
        "reconstruction_mse": round(mse, 5),
        "scaling_factor": round(float(vae.config.scaling_factor), 5),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return vae, info


def train_denoiser(
    vae: Any, images: torch.Tensor, prompts: list[list[str]], steps: int, batch: int, lr: float
) -> tuple[Any, Any, Any, dict[str, Any]]:
    tok = make_tokenizer()
    text, unet = make_text_encoder(len(tok)), make_unet()
    ema_text, ema_unet = make_text_encoder(len(tok)), make_unet()
    ema_text.load_state_dict(text.state_dict())
    ema_unet.load_state_dict(unet.state_dict())
    ema_text.requires_grad_(False)
    ema_unet.requires_grad_(False)
    sched = make_scheduler()
    alphas = sched.alphas_cumprod
    with torch.no_grad():
        post = vae.encode(images).latent_dist
        mean, std = post.mean, post.std
    scale = vae.config.scaling_factor
    params = [*text.parameters(), *unet.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)
    t0, losses = time.perf_counter(), []
    text.train()
    unet.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr)
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        words = [
            "" if rng.random() < PROMPT_DROPOUT else prompts[i][int(rng.integers(len(prompts[i])))]
            for i in idx.tolist()
        ]
        ids = tok(words, padding="max_length", max_length=MAX_TOKENS, return_tensors="pt")
        cond = text(ids.input_ids)[0]
        z0 = (mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)) * scale
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        a = alphas[t].sqrt()[:, None, None, None]
        s = (1 - alphas[t]).sqrt()[:, None, None, None]
        pred = unet(a * z0 + s * noise, t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema_step(ema_text, text, step)
        ema_step(ema_unet, unet, step)
        losses.append(loss.item())
        if step % 500 == 0 or step == steps - 1:
            recent = float(np.mean(losses[-100:]))
            print(f"unet step {step:5d} loss {recent:.4f} {time.perf_counter() - t0:6.0f} s")
    info = {
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "prompt_dropout": PROMPT_DROPOUT,
        "final_loss": round(float(np.mean(losses[-200:])), 5),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return tok, ema_text.eval(), ema_unet.eval(), info


def training_prompts(labels: torch.Tensor, styles: list[str]) -> list[list[str]]:
    """Every prompt each image may be trained with (templates x numeral or name)."""
    rng = np.random.default_rng(0)
    out = []
    for label, style in zip(labels.tolist(), styles, strict=True):
        out.append(sorted({prompt_for(label, style, rng) for _ in range(24)}))
    return out


def write_eval_prompts(path: Path) -> None:
    """The evaluation's prompts: three per digit (name, numeral, stroke), one JSON object a
    line, as `arrowquant eval --prompts` and `--calibration` read them."""
    lines = []
    for d, name in enumerate(NAMES):
        for text in (f"a handwritten {name}", f"the number {d}", f"a bold {name}"):
            lines.append(json.dumps({"prompt": text}))
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    from diffusers import StableDiffusionPipeline

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)
    images, labels = load_digits_images()
    t0 = time.perf_counter()
    vae, vae_info = train_vae(images, steps=1200, batch=64, lr=1e-3)
    prompts = training_prompts(labels, strokes(images, labels))
    tok, text, unet, unet_info = train_denoiser(vae, images, prompts, steps=2500, batch=64, lr=1e-3)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=make_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(OUT, safe_serialization=True)
    info = {
        "pipeline": "StableDiffusionPipeline (tokenizer: PreTrainedTokenizerFast, word level)",
        "parameters": {
            "text_encoder": sum(p.numel() for p in text.parameters()),
            "unet": sum(p.numel() for p in unet.parameters()),
            "vae": sum(p.numel() for p in vae.parameters()),
        },
        "vocabulary": len(tok),
        "vae": vae_info,
        "denoiser": unet_info,
        "schedule": "DDPM 1000 steps, squaredcos_cap_v2, epsilon prediction, EMA 0.999",
        "seconds": round(time.perf_counter() - t0, 1),
        "threads": THREADS,
        "torch": torch.__version__,
    }
    (OUT / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    write_eval_prompts(OUT / "prompts.jsonl")
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
