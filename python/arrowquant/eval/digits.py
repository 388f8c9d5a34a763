"""scikit-learn's bundled 8x8 digits (1,797 images, no download), as diffusion training data.

Images are scaled to [-1, 1] and upsampled to `size` x `size`. `to_classifier_input` is the way
back: 2x2 (or 4x4) average pooling to 8x8 in the classifier's [0, 16] range, applied alike to real
and generated images so that the Fréchet distance compares like with like.
"""

from __future__ import annotations

from typing import Any

import numpy as np

IMAGE_SIZE = 16
NUM_CLASSES = 10
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def load_digits_images(size: int = IMAGE_SIZE) -> tuple[Any, Any]:
    """(images float32 [N, 1, size, size] in [-1, 1], labels int64 [N])."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    if size != 8:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(-1.0, 1.0).contiguous(), torch.from_numpy(d.target.astype(np.int64))


def to_classifier_input(images: Any) -> np.ndarray:
    """[N, 1, S, S] images in [-1, 1] -> [N, 64] float64 in the digits' [0, 16] range."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3] or x.shape[2] % 8:
        raise ValueError(f"expected [N, 1, S, S] images with S a multiple of 8, got {x.shape}")
    f = x.shape[2] // 8
    pooled = x.reshape(x.shape[0], 8, f, 8, f).mean(axis=(2, 4))
    out: np.ndarray = ((np.clip(pooled, -1.0, 1.0) + 1.0) * 8.0).reshape(x.shape[0], 64)
    return out


def requested_digit(prompt: str) -> int | None:
    """The digit a prompt asks for, by name ("a thin seven") or numeral ("number 7"); None
    when it names none or several."""
    import re

    found = set()
    for word in re.findall(r"[a-z]+|\d", prompt.lower()):
        if word in DIGIT_NAMES:
            found.add(DIGIT_NAMES.index(word))
        elif word.isdigit():
            found.add(int(word))
    return found.pop() if len(found) == 1 else None
