"""Trains the project's reference models on scikit-learn's bundled digits (no download).

    .venv/bin/python models/train_reference.py [classifier|ddpm|dit|all]

- `digits-classifier/`: an MLP (scikit-learn) whose hidden layer is the feature space of the
  evaluation's Fréchet distance and accuracy; weights stored as safetensors (never pickled) in
  python/arrowquant/eval/digits_classifier.safetensors.
- `digits-ddpm/`: an unconditional diffusers `UNet2DModel` (16x16, epsilon prediction), saved as
  a diffusers DDPMPipeline (unet/ + scheduler/).
- `digits-dit/`: a class-conditional diffusers `DiTTransformer2DModel` (adaLN-Zero, patch 2),
  saved as transformer/ + scheduler/ (no VAE: it denoises pixels).

Everything is seeded and runs with deterministic algorithms on 2 threads; the weights are
exponential moving averages of the trained ones. Each folder gets `training.json` with the
settings, the wall time and the final loss.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arrowquant.eval.digits import IMAGE_SIZE, NUM_CLASSES, load_digits_images

HERE = Path(__file__).resolve().parent
# The evaluation ships the classifier inside the package (17 KB) so that `arrowquant eval` works
# from an installed wheel; its training record stays here with the other models'.
CLASSIFIER_WEIGHTS = (
    HERE.parent / "python" / "arrowquant" / "eval" / "digits_classifier.safetensors"
)
THREADS = 2


def make_ddpm() -> torch.nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=IMAGE_SIZE,
        in_channels=1,
        out_channels=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    )


def make_dit() -> torch.nn.Module:
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel(
        num_attention_heads=4,
        attention_head_dim=32,
        in_channels=1,
        num_layers=4,
        sample_size=IMAGE_SIZE,
        patch_size=2,
        num_embeds_ada_norm=NUM_CLASSES,
        norm_num_groups=1,
    )


def make_scheduler() -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")


def train_classifier(out: Path) -> dict[str, Any]:
    from safetensors.numpy import save_file
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    t0 = time.perf_counter()
    d = load_digits()
    xtr, xte, ytr, yte = train_test_split(
        d.data, d.target, test_size=0.25, random_state=0, stratify=d.target
    )
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=2000, random_state=0)
    clf.fit(xtr / 16.0, ytr)
    acc = float(clf.score(xte / 16.0, yte))
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "w0": clf.coefs_[0].astype(np.float32),
            "b0": clf.intercepts_[0].astype(np.float32),
            "w1": clf.coefs_[1].astype(np.float32),
            "b1": clf.intercepts_[1].astype(np.float32),
        },
        str(CLASSIFIER_WEIGHTS),
    )
    info = {
        "model": "sklearn MLPClassifier(hidden_layer_sizes=(64,), relu), input digits/16",
        "held_out_accuracy": acc,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return info


def train_diffusion(kind: str, out: Path, steps: int, batch: int, lr: float) -> dict[str, Any]:
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)
    images, labels = load_digits_images()
    model = make_ddpm() if kind == "ddpm" else make_dit()
    ema = make_ddpm() if kind == "ddpm" else make_dit()
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    sched = make_scheduler()
    alphas = sched.alphas_cumprod
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    warmup = 200
    losses: list[float] = []
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        frac = step / steps
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * frac))
        idx = torch.randint(0, images.shape[0], (batch,), generator=gen)
        x0 = images[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        a = alphas[t].sqrt()[:, None, None, None]
        s = (1 - alphas[t]).sqrt()[:, None, None, None]
        xt = a * x0 + s * noise
        if kind == "ddpm":
            pred = model(xt, t).sample
        else:
            pred = model(xt, timestep=t, class_labels=labels[idx]).sample
        loss = torch.nn.functional.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1.0 - decay)
        losses.append(loss.item())
        if step % 500 == 0 or step == steps - 1:
            recent = float(np.mean(losses[-100:]))
            print(f"{kind} step {step:5d} loss {recent:.4f} {time.perf_counter() - t0:6.0f} s")
    seconds = time.perf_counter() - t0
    save_diffusion(kind, ema, sched, out)
    return {
        "model": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "batch": batch,
        "lr": lr,
        "schedule": "DDPM 1000 steps, squaredcos_cap_v2, epsilon prediction, EMA 0.999",
        "final_loss": round(float(np.mean(losses[-200:])), 5),
        "seconds": round(seconds, 1),
        "threads": THREADS,
        "torch": torch.__version__,
    }


def save_diffusion(kind: str, model: torch.nn.Module, sched: Any, out: Path) -> None:
    import diffusers

    out.mkdir(parents=True, exist_ok=True)
    component = "unet" if kind == "ddpm" else "transformer"
    model.save_pretrained(out / component)  # type: ignore[operator]
    sched.save_pretrained(out / "scheduler")
    index = {
        "_class_name": "DDPMPipeline" if kind == "ddpm" else "DiTPipeline",
        "_diffusers_version": diffusers.__version__,
        component: ["diffusers", type(model).__name__],
        "scheduler": ["diffusers", type(sched).__name__],
    }
    if kind == "dit":
        index["vae"] = [None, None]  # pixel-space DiT
    (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def main(argv: list[str]) -> int:
    what = argv[0] if argv else "all"
    jobs = ["classifier", "ddpm", "dit"] if what == "all" else [what]
    for job in jobs:
        out = HERE / f"digits-{job}"
        if job == "classifier":
            info = train_classifier(out)
        elif job == "ddpm":
            info = train_diffusion("ddpm", out, steps=3000, batch=64, lr=1e-3)
        elif job == "dit":
            info = train_diffusion("dit", out, steps=4000, batch=64, lr=5e-4)
        else:
            print(f"unknown job {job!r}: classifier, ddpm, dit or all", file=sys.stderr)
            return 2
        (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
        print(job, json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
