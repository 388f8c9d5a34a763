"""What the text-to-image and code models' training share: the learning-rate schedule (linear
warmup, cosine decay) and the EMA of the weights (decay ramping up to 0.999)."""

from __future__ import annotations

import math

import torch


def lr_at(step: int, steps: int, lr: float, warmup: int = 200) -> float:
    return lr * min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * step / steps))


def ema_step(ema: torch.nn.Module, live: torch.nn.Module, step: int) -> None:
    decay = min(0.999, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), live.parameters(), strict=True):
            pe.lerp_(pm, 1.0 - decay)
